"""The benchmark tiers' configs. This folder is also the package ``deft_cli.bench`` (see pyproject.toml), so that
``deft bench NAME`` finds NAME.yaml in an installed DEFT as well as in a checkout."""
