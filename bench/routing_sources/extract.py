"""Build the two chat sets the router is trained and checked on from public GitHub snapshots.

    python bench/routing_sources/extract.py --qlora DIR --fastchat DIR --out DIR

``DIR`` for each source is a git clone (bare or not) of the repository at or after the commit
below; the files are read with ``git show COMMIT:path``, so nothing else in the clone matters.
The output folder then holds ``qlora_oasst/`` and ``vicuna80/`` for ``bench/train_router.py
--extra`` and ``bench/routing_eval.py --extra``.

Sources and licences (quoted from the repositories):

* ``artidoro/qlora`` at ``7f4e95a68dc076bea9b3a413d2b512eca6d004e5`` (the QLoRA / Guanaco paper):
  "We release the resources associated with QLoRA finetuning in this repository under MIT
  license." Files: ``eval/prompts/oa_questions.jsonl`` (953 OpenAssistant OASST1 validation
  prompts, Apache-2.0), ``eval/ratings-gpt4/oa/*`` (GPT-4 three-way preferences between 7 models,
  both answer orders), ``eval/ratings-gpt4/vicuna/relative-gpt-3.5/*`` (GPT-4 1-10 scores of 36
  models against GPT-3.5 on the 80 Vicuna prompts), ``eval/generations/**`` (answer lengths only).
* ``lm-sys/FastChat`` at ``69d085eadab8e9fcf831a97e17e132658c3d2272`` (the parent of the commit that
  removed ``fastchat/eval/table``), Apache-2.0: ``fastchat/eval/table/question.jsonl`` (the 80
  Vicuna prompts and categories), ``answer/*.jsonl``, ``review/**/review_*.jsonl`` (GPT-4 1-10
  pair scores).

The judgments are GPT-4 outputs (OpenAI's terms apply): they are used here to fit and check a
small routing model, not to train a language model. Only scores and lengths are written, never
the models' answers.

Two facts a reader needs: in qlora's ``relative-gpt-3.5`` files of the QLoRA-trained models the
order in the file name is the reverse of the judged order, so GPT-3.5's side is found by its
answer ids; and the "30b" in qlora's file names is LLaMA-1 33B.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import re
import subprocess
from pathlib import Path

QLORA_COMMIT = "7f4e95a68dc076bea9b3a413d2b512eca6d004e5"
FASTCHAT_COMMIT = "69d085eadab8e9fcf831a97e17e132658c3d2272"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def _jsonl(repo: Path, commit: str, path: str) -> list[dict]:
    return [json.loads(line) for line in _git(repo, "show", f"{commit}:{path}").splitlines() if line.strip()]


def _files(repo: Path, commit: str, folder: str) -> list[str]:
    return [line.split("\t")[-1] for line in _git(repo, "ls-tree", "-r", commit, folder).splitlines()]


def _model(name: str) -> str:
    """qlora's file-name model ids -> the names used in the tables."""
    n = name.replace("-topp0.9-temp0.7", "").replace("-topp0.9-beam1", "")
    n = n.replace("-gpt-4-reviewer-threeclass", "").replace("-gpt4-reviewer", "").replace("answer-", "")
    n = re.sub(r"-(vicuna|oa)-generations", "", n)
    m = re.match(r"^(7b|13b|30b|65b)-(.+)$", n)
    if m:
        size = {"30b": "33b"}.get(m.group(1), m.group(1))
        data = m.group(2)
        if data == "guanaco":
            return f"guanaco-{size}"
        return "huggingchat-oasst-llama-30b" if data == "huggingchat" else f"llama1-{size}-qlora-{data}"
    return {"gpt-3.5": "gpt-3.5-turbo", "gpt35": "gpt-3.5-turbo", "gpt4": "gpt-4", "vicuna-13b": "vicuna-13b-v0"}.get(n, n)


def _length(text: str) -> tuple[int, int]:
    return len(text.split()), len(text)


def _write_scores(path: Path, scores: dict, lengths: dict, count_name: str, digits: int) -> None:
    """One row per (prompt, model): the mean of its scores, how many, and its answer's length."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "model", "score", count_name, "answer_words", "answer_chars"])
        for (i, m), v in sorted(scores.items()):
            words, chars = lengths.get((i, m), ("", ""))
            w.writerow([i, m, round(sum(v) / len(v), digits), len(v), words, chars])


def oasst(qlora: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    questions = _jsonl(qlora, QLORA_COMMIT, "eval/prompts/oa_questions.jsonl")
    with (out / "prompts.jsonl").open("w", encoding="utf-8") as f:
        for q in questions:
            turns = [t.split("### Assistant:")[0].strip() for t in q["input"].split("### Human:")[1:]]
            f.write(json.dumps({"id": q["message_id"], "text": q["input"], "last_user_turn": turns[-1] if turns else q["input"],
                                "n_user_turns": len(turns), "lang": q["lang"]}, ensure_ascii=False) + "\n")
    lengths: dict[tuple[str, str], tuple[int, int]] = {}
    for path in _files(qlora, QLORA_COMMIT, "eval/generations/oa"):
        try:
            rows = _jsonl(qlora, QLORA_COMMIT, path)
        except (subprocess.CalledProcessError, ValueError):
            continue  # a file the snapshot lacks (several are over 4 MiB)
        model = _model(os.path.basename(path)[:-6])
        for r in rows:
            lengths[(r["message_id"], model)] = _length(r.get("generation") or r.get("text") or "")
    wins: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for path in _files(qlora, QLORA_COMMIT, "eval/ratings-gpt4/oa"):
        a, b = os.path.basename(path)[:-6].replace("-gpt-4-reviewer-threeclass", "").split("-vs-")
        ma, mb = _model(a), _model(b)
        for r in _jsonl(qlora, QLORA_COMMIT, path):
            s = {1: 1.0, 2: 0.0, 3: 0.5}.get(int(r["score"]))
            if s is None:
                continue  # the judge's answer could not be parsed
            wins[(r["message_id"], ma)].append(s)
            wins[(r["message_id"], mb)].append(1.0 - s)
    _write_scores(out / "scores.csv", wins, lengths, "n_comparisons", 4)


def vicuna80(qlora: Path, fastchat: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    questions = _jsonl(fastchat, FASTCHAT_COMMIT, "fastchat/eval/table/question.jsonl")
    with (out / "prompts.jsonl").open("w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps({"id": int(q["question_id"]), "text": q["text"], "category": q["category"]},
                               ensure_ascii=False) + "\n")
    lengths: dict[tuple[int, str], tuple[int, int]] = {}
    for path in _files(qlora, QLORA_COMMIT, "eval/generations/vicuna"):
        if "secondround" in path:
            continue
        for r in _jsonl(qlora, QLORA_COMMIT, path):
            text = r["generation"] if "generation" in r else r.get("text", "")
            lengths[(int(r["question_id"]), _model(os.path.basename(path)[:-6]))] = _length(text or "")
    fastchat_model = {"vicuna-13b:20230322-clean-lang": "vicuna-13b-v0", "alpaca-13b:v1": "alpaca-13b",
                      "llama-13b:v1": "llama-13b", "bard:20230327": "bard", "gpt-3.5-turbo:20230327": "gpt-3.5-turbo",
                      "vicuna-13b:20230322-new-hp-fp16": "vicuna-13b-v0-new-hp", "vicuna-7b:20230322-fp16": "vicuna-7b-v0"}
    answers = {}
    for path in _files(fastchat, FASTCHAT_COMMIT, "fastchat/eval/table/answer"):
        for r in _jsonl(fastchat, FASTCHAT_COMMIT, path):
            answers[r["answer_id"]] = (fastchat_model.get(r["model_id"], r["model_id"]), int(r["question_id"]), r["text"])
    gpt35 = {r["answer_id"] for r in _jsonl(qlora, QLORA_COMMIT, "eval/generations/vicuna/answer_gpt35.jsonl")}
    scores: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
    for path in _files(qlora, QLORA_COMMIT, "eval/ratings-gpt4/vicuna/relative-gpt-3.5"):
        a, b = os.path.basename(path)[:-6].replace("-gpt4-reviewer", "").split("-vs-")
        other = _model(b) if _model(a) == "gpt-3.5-turbo" else _model(a)
        for r in _jsonl(qlora, QLORA_COMMIT, path):
            sc = json.loads(r["score"]) if isinstance(r["score"], str) else r["score"]
            if not isinstance(sc, list) or len(sc) != 2 or sc[0] < 0:
                continue
            if r["answer1_id"] in gpt35:
                first, second = "gpt-3.5-turbo", other
            elif r["answer2_id"] in gpt35:
                first, second = other, "gpt-3.5-turbo"
            else:
                raise SystemExit(f"cannot place GPT-3.5 in {path}")
            q = int(r["question_id"])
            scores[(q, first)].append(float(sc[0]))
            scores[(q, second)].append(float(sc[1]))
    for path in _files(fastchat, FASTCHAT_COMMIT, "fastchat/eval/table/review"):
        if "gpt-3.5-turbo_review" in path:
            continue  # GPT-3.5 as the judge
        for r in _jsonl(fastchat, FASTCHAT_COMMIT, path):
            sc, a1, a2 = r["score"], answers.get(r["answer1_id"]), answers.get(r["answer2_id"])
            if not isinstance(sc, list) or len(sc) != 2 or sc[0] < 0 or not a1 or not a2:
                continue
            q = int(r["question_id"])
            scores[(q, a1[0])].append(float(sc[0]))
            scores[(q, a2[0])].append(float(sc[1]))
            for a in (a1, a2):
                lengths.setdefault((q, a[0]), _length(a[2]))
    _write_scores(out / "scores.csv", scores, lengths, "n_judgments", 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qlora", type=Path, required=True, help="a clone of github.com/artidoro/qlora")
    ap.add_argument("--fastchat", type=Path, required=True, help="a clone of github.com/lm-sys/FastChat")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    oasst(args.qlora, args.out / "qlora_oasst")
    vicuna80(args.qlora, args.fastchat, args.out / "vicuna80")
    print(f"wrote {args.out / 'qlora_oasst'} and {args.out / 'vicuna80'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
