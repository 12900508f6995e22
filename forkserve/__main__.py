"""`python -m forkserve` is the same command as `forkserve`."""

from forkserve.cli import main

if __name__ == "__main__":
    main()
