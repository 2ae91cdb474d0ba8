from deft.errors import ConfigError, DataFormatError, DeftError


def test_error_names_file_line_and_field():
    err = DataFormatError("column 'timestamp' is not a number: 'abc'", file="ml-100k.inter", line=17,
                          field="timestamp")
    assert str(err) == "ml-100k.inter line 17: column 'timestamp' is not a number: 'abc'"
    err = DataFormatError("not a number: 'abc'", file="x.csv", line=3, field="rating")
    assert str(err) == "x.csv line 3: field 'rating': not a number: 'abc'"


def test_config_error_lists_all_problems():
    err = ConfigError(["a is wrong", "b is wrong"])
    assert str(err) == "2 problems: a is wrong; b is wrong" and err.problems == ["a is wrong", "b is wrong"]


def test_a_message_that_opens_with_its_file_does_not_name_it_twice():
    assert str(DeftError("runs/a/coreset.jsonl exists; use --overwrite", file="runs/a/coreset.jsonl")) == (
        "runs/a/coreset.jsonl exists; use --overwrite")
    assert str(DeftError("exists", file="runs/a/coreset.jsonl", line=3)) == "runs/a/coreset.jsonl line 3: exists"
    # a path quoted inside a library's message is no reason to drop the file the error opens with
    assert str(DeftError("cannot open 'runs/x.parquet'", file="runs/x.parquet")) == (
        "runs/x.parquet: cannot open 'runs/x.parquet'")
