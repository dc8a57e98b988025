"""Model cards, exporting checkpoints, and publishing a trained pipeline folder to the Hugging Face Hub.

    python -m denoising_diffusion.hub card outputs/digits            # (re)write outputs/digits/README.md
    python -m denoising_diffusion.hub push outputs/digits --repo_id you/ddim-digits [--private]
    python -m denoising_diffusion.hub export outputs/digits/checkpoint-500 [--output DIR] [--repo_id you/x]

`export` turns a resumable `checkpoint-STEP` into a loadable pipeline (EMA weights, card;
default folder: `outputs/digits-step500`), and pushes it with `--repo_id`. The token comes from
`--token`, `HF_TOKEN` or `hf auth login`; it is never written anywhere. A repo id without an owner
goes to the token's user, and the pushed card's code loads from the full `owner/name`.
"""

import argparse
import sys
from pathlib import Path

from .publishing import PushError, push_folder, write_model_card
from .training.checkpoints import export_pipeline
from .training.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m denoising_diffusion.hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    card = sub.add_parser("card", help="Write FOLDER/README.md from model_card.md.")
    card.add_argument("folder")
    card.add_argument("--repo_id", default=None, help="The repo the card is for (its code loads from there).")
    push = sub.add_parser("push", help="Upload FOLDER to the Hub (creates the repo).")
    push.add_argument("folder")
    push.add_argument("--repo_id", required=True, help="owner/name, or a name for the token's user.")
    export = sub.add_parser("export", help="Save CHECKPOINT (checkpoint-STEP) as a loadable pipeline; push it with --repo_id.")
    export.add_argument("checkpoint")
    export.add_argument("--output", default=None, help="Default: the run folder's name + '-stepSTEP', beside it.")
    export.add_argument("--no_ema", action="store_true", help="The raw weights instead of the EMA ones.")
    export.add_argument("--repo_id", default=None, help="Also push the exported pipeline there.")
    for command in (push, export):
        command.add_argument("--private", action="store_true")
        command.add_argument("--token", default=None, help="Defaults to HF_TOKEN or the stored login.")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "card":
        print(f"Wrote {write_model_card(args.folder, args.repo_id)}")
        return
    folder = args.folder if args.command == "push" else None
    try:
        if args.command == "export":
            checkpoint = Path(args.checkpoint)
            output = args.output or checkpoint.resolve().parent.with_name(
                f"{checkpoint.resolve().parent.name}-step{checkpoint.name.split('-')[-1]}")
            folder = export_pipeline(checkpoint, output, ema_weights=not args.no_ema)
            write_model_card(folder)
            print(f"Exported {checkpoint} to {folder}")
            if args.repo_id is None:
                return
        info = push_folder(folder, args.repo_id, private=args.private or None, token=args.token)
    except (PushError, FileNotFoundError, ConfigError) as error:
        sys.exit(f"error: {error}")
    print(f"Pushed {folder}: {info.commit_url}")


if __name__ == "__main__":
    main()
