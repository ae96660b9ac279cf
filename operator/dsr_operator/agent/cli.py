"""Command-line entry points of the agent (placeholder until the component lands)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this component's subcommands."""
