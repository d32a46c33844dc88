"""The `lfm2q` command line. It only wires arguments to the Python API and renders results.

Every user-caused error (an `Lfm2qError`) becomes one line on stderr and a non-zero exit code,
never a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import Lfm2qError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Run LFM2 / LFM2.5 GGUF models on the CPU, and convert HF checkpoints to GGUF.",
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print a one-line error and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def convert(
    hf_dir: Path = typer.Argument(..., help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files)."),
    output: Path = typer.Option(..., "-o", "--output", help="GGUF file to write."),
    out_type: str = typer.Option("f16", "--type", "-t", help="Weight type: f32, f16, bf16, q8_0."),
) -> None:
    """Convert an HF LFM2 checkpoint to a GGUF file that lfm2q and llama.cpp load."""
    from .convert import convert_hf

    try:
        convert_hf(hf_dir, output, out_type, progress=True)
    except Lfm2qError as e:
        raise fail(str(e))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        # Ctrl-C outside a reply: leave quietly with the conventional status.
        sys.exit(130)


if __name__ == "__main__":
    main()
