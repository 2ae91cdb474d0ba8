"""The SASRec surrogate: model, training, evaluation, save/load (algorithms.md §2)."""

from deft.surrogate.sasrec import (
    ItemIndex,
    SASRec,
    encode_histories,
    encode_item_pairs,
    pad_left,
    sample_loss,
)
from deft.surrogate.trainer import (
    SurrogateReport,
    evaluate,
    load_surrogate,
    popularity_metrics,
    ranking_metrics,
    save_surrogate,
    train_surrogate,
)

__all__ = ["ItemIndex", "SASRec", "SurrogateReport", "encode_histories", "encode_item_pairs", "evaluate",
           "load_surrogate", "pad_left", "popularity_metrics", "ranking_metrics", "sample_loss", "save_surrogate",
           "train_surrogate"]
