"""``python -m deft`` runs the CLI."""

from deft_cli.main import main

if __name__ == "__main__":
    main()
