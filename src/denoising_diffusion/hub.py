"""Model cards and publishing a trained pipeline folder to the Hugging Face Hub.

    python -m denoising_diffusion.hub card outputs/digits            # (re)write outputs/digits/README.md
    python -m denoising_diffusion.hub push outputs/digits --repo_id you/ddim-digits [--private]

The token comes from `--token`, `HF_TOKEN` or `hf auth login`; it is never written anywhere.
"""

import argparse
import sys

from .publishing import PushError, push_folder, write_model_card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m denoising_diffusion.hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    card = sub.add_parser("card", help="Write FOLDER/README.md from model_card.md.")
    card.add_argument("folder")
    card.add_argument("--repo_id", default=None)
    push = sub.add_parser("push", help="Upload FOLDER to the Hub (creates the repo).")
    push.add_argument("folder")
    push.add_argument("--repo_id", required=True)
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", default=None, help="Defaults to HF_TOKEN or the stored login.")
    args = parser.parse_args(argv)
    if args.command == "card":
        print(f"Wrote {write_model_card(args.folder, args.repo_id)}")
        return
    try:
        info = push_folder(args.folder, args.repo_id, private=args.private or None, token=args.token)
    except (PushError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(f"Pushed {args.folder}: {info.commit_url}")


if __name__ == "__main__":
    main()
