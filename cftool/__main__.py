"""`python -m cftool` and the `cftool` script. The CLI is imported here, inside the guard, so that a Ctrl-C while it
is still loading is one line too, like one during a command."""

import sys


def main() -> None:
    try:
        from cftool.cli import run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: nothing was written\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
