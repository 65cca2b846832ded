"""Convert DALL-E's published dVAE encoder to the safetensors layout of ``{type: dvae}``.

Usage::

    pip install DALL-E            # its classes are needed to unpickle encoder.pkl
    curl -LO https://cdn.openai.com/dall-e/encoder.pkl
    python scripts/convert_dalle_encoder.py encoder.pkl --output dvae-encoder.safetensors

``encoder.pkl`` is a pickled ``dall_e.encoder.Encoder`` module: unpickling runs code, so convert
only the file you downloaded from openai's address yourself (``torch.load(weights_only=False)``).
A plain state-dict file (``torch.save(encoder.state_dict(), ...)``) is read with
``weights_only=True`` and needs no ``dall_e`` package. The keys keep their names with DALL-E's
``.w``/``.b`` renamed ``.weight``/``.bias``; the result is checked against
`modaloom.objectives.dvae.DALLEEncoder` built with the sizes read from it, and the spec line that
loads it is printed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from modaloom.objectives.dvae import DALLEEncoder


def renamed(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DALL-E's keys in modaloom's layout: ``...conv_1.w`` -> ``...conv_1.weight``."""
    out = {}
    for key, value in state.items():
        new = re.sub(r"\.w$", ".weight", re.sub(r"\.b$", ".bias", key))
        out[new] = value.detach().float().contiguous()
    return out


def encoder_sizes(state: Mapping[str, Tensor]) -> dict[str, int]:
    """``codes``, ``hidden``, ``blocks_per_group`` and ``channels`` read from the tensors."""
    blocks = {m.group(1) for k in state if (m := re.match(r"blocks\.group_1\.(block_\d+)\.", k))}
    return {
        "codes": int(state["blocks.output.conv.weight"].shape[0]),
        "hidden": int(state["blocks.input.weight"].shape[0]),
        "blocks_per_group": len(blocks),
        "channels": int(state["blocks.input.weight"].shape[1]),
    }


def read_state(path: Path, trust_pickle: bool) -> Mapping[str, Tensor]:
    """The state dict of ``path``: a pickled module (``trust_pickle``) or a state-dict file."""
    if not trust_pickle:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(loaded, torch.nn.Module):
        return loaded.state_dict()
    if isinstance(loaded, Mapping):
        return loaded
    raise SystemExit(f"error: {path} holds a {type(loaded).__name__}, not an encoder")


def convert(source: Path, output: Path, trust_pickle: bool) -> dict[str, int]:
    """Write ``output``; returns the sizes to set in the spec.

    Raises:
        SystemExit: the tensors do not fill `DALLEEncoder` exactly (names the keys).
    """
    state = renamed(read_state(source, trust_pickle))
    try:
        sizes = encoder_sizes(state)
    except KeyError as exc:
        raise SystemExit(f"error: {source} has no tensor {exc}; is it DALL-E's encoder?") from None
    own = DALLEEncoder(**sizes).state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise SystemExit(f"error: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    save_file(state, str(output))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="encoder.pkl (or a state-dict .pt file)")
    parser.add_argument("--output", type=Path, required=True, help="the .safetensors to write")
    parser.add_argument(
        "--state-dict",
        action="store_true",
        help="source is a plain state dict: load it with weights_only=True (no code runs)",
    )
    args = parser.parse_args(argv)
    sizes = convert(args.source, args.output, trust_pickle=not args.state_dict)
    print(f"wrote {args.output}; spec:")
    print(
        f"  visual_tokenizer: {{type: dvae, path: {args.output}, codes: {sizes['codes']}, "
        f"hidden: {sizes['hidden']}, blocks_per_group: {sizes['blocks_per_group']}}}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
