"""The `transmamba` console script."""

import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(prog="transmamba")
    parser.add_subparsers(dest="command")
    args = parser.parse_args(argv)
    parser.print_help()


if __name__ == "__main__":
    main()
