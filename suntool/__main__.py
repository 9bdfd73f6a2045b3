"""`python -m suntool` runs the command-line interface."""

from suntool.cli import main

if __name__ == "__main__":
    main()
