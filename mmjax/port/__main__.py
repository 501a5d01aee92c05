"""Port a Hugging Face checkpoint into an Orbax checkpoint that experiments load with `init_from`.

python -m mmjax.port --hf DIR --out CKPT [--tower text|vision|...]
"""

import argparse
import sys

import jax

from mmjax.port.pretrained import save_ported


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmjax.port", description=__doc__.splitlines()[0])
    parser.add_argument("--hf", required=True, help="HF folder with config.json and model.safetensors/.bin")
    parser.add_argument("--out", required=True, help="new folder for the Orbax checkpoint")
    parser.add_argument("--tower", default=None, help="the tower of a multi-tower checkpoint (CLIP)")
    args = parser.parse_args(argv)
    try:
        module, params = save_ported(args.hf, args.out, args.tower)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        parser.exit(2, f"mmjax.port: error: {err}\n")
    count = sum(x.size for x in jax.tree.leaves(params))
    print(f"wrote {type(module).__name__} ({count:,} parameters) from {args.hf} to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
