"""`pier completion bash|zsh`: the shell's completion script, from argcomplete."""

from __future__ import annotations

import argparse
from typing import Any

import argcomplete

from pier.cli.command import add
from pier.client import Client


def cmd_completion(client: Client, args: argparse.Namespace) -> int:
    print(argcomplete.shellcode(["pier"], shell=args.shell))
    return 0


def register(sub: Any) -> None:
    c = add(
        sub,
        "completion",
        cmd_completion,
        "print the shell completion script for bash or zsh",
        ['eval "$(pier completion bash)"     # in ~/.bashrc', 'eval "$(pier completion zsh)"      # in ~/.zshrc'],
    )
    c.add_argument("shell", choices=("bash", "zsh"))
