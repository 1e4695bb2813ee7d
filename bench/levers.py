"""Identity against editability on the toy model, lever by lever: `python bench/levers.py` (make bench-levers).

Each lever trains `*` on 4 pictures of the toy model's held-out concepts (world.HELD_OUT) through the library's
`train()` with the packaged configs/toy.yaml plus the lever's keys, for several seeds (the pictures, the training
draws and the samples all change with the seed), then judges:

- identity: the share of 16 samples of `a photo of *` the toy judge sees as the concept;
- editability: the share of samples of `a photo of a <colour> *` (every other colour of the world, the edit
  templates below, 4 samples each) that it sees as the concept's shape in the colour asked for.

Use-time levers need no training: the baseline's vectors blended toward the init word (`textinv convert
--strength S`), the prompt weight `(*:w)`, and the EMA written beside the baseline's vectors.

Stage `choose` runs on the first two held-out concepts (the ones the defaults are chosen on); stage `check` trains
with the packaged toy config as it is on the other two, in four conditions: as in `choose`; "drawn differently"
(smaller shapes, so placed more widely, and edit templates the choice never saw); the init word `shape` instead
of the shape's name; and "edit words held out" (the edit anchor taught three colours, judged on the others).
Every result is appended to results.jsonl in --out, and a rerun skips what is there, so the bench can be stopped
and continued; `--shard K/N` splits a stage between N processes. `--plot` draws docs/levers.png from the results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from textinv.toy import world

ROOT = Path(__file__).resolve().parents[1]
SAMPLES, EDIT_SAMPLES = 16, 4
# Chosen on the first two held-out concepts (the purple triangle, the green circle), checked on the other two
# (the orange cross, the yellow square), which the choice never saw.
CHOOSE, CHECK = world.HELD_OUT[:2], world.HELD_OUT[2:]
CHOOSE_TEMPLATES = ("a photo of a {colour} {}", "a rendering of a {colour} {}")
CHECK_TEMPLATES = ("a good photo of a {colour} {}", "the photo of the {colour} {}")  # never used in `choose`
TAUGHT = ("red", "yellow", "blue")  # "edit words held out": the anchor is taught these, judged on the others
SMALL = (8.0, 13.0)  # "drawn differently": shapes 8-13 px instead of the renderer's 13-24

EDIT_WORDS = f"optim.edit_words=[{', '.join(world.COLOURS)}]"
# name -> the config keys it sets over configs/toy.yaml (as `--set` takes them)
TRAINED = {
    "baseline (toy.yaml before)": ["optim.ema_decay=0.99", "optim.edit_anchor_weight=0",
                                   "optim.embedding_reg_weight=0", "optim.norm_control=none",
                                   "optim.min_snr_gamma=0", "optim.max_drift=0", "train.max_steps=300",
                                   "personalization.num_vectors_per_token=2"],
    "reg 0.01": ["optim.embedding_reg_weight=0.01"],
    "reg 0.1": ["optim.embedding_reg_weight=0.1"],
    "reg 0.15": ["optim.embedding_reg_weight=0.15"],
    "reg 0.2": ["optim.embedding_reg_weight=0.2"],
    "reg 0.3": ["optim.embedding_reg_weight=0.3"],
    "reg 1": ["optim.embedding_reg_weight=1"],
    "drift 0.2": ["optim.embedding_reg_weight=0", "optim.max_drift=0.2"],
    "drift 0.3": ["optim.embedding_reg_weight=0", "optim.max_drift=0.3"],
    "drift 0.35": ["optim.embedding_reg_weight=0", "optim.max_drift=0.35"],
    "drift 0.45": ["optim.embedding_reg_weight=0", "optim.max_drift=0.45"],
    "drift 0.35 cosine": ["optim.embedding_reg_weight=0", "optim.max_drift=0.35", "optim.lr_scheduler=cosine"],
    "drift 0.4 cosine": ["optim.embedding_reg_weight=0", "optim.max_drift=0.4", "optim.lr_scheduler=cosine"],
    "1 vector reg 0.2": ["optim.embedding_reg_weight=0.2", "personalization.num_vectors_per_token=1"],
    "1 vector": ["personalization.num_vectors_per_token=1"],
    "1 vector drift 0.3": ["optim.embedding_reg_weight=0", "optim.max_drift=0.3",
                           "personalization.num_vectors_per_token=1"],
    "1 vector drift 0.35": ["optim.embedding_reg_weight=0", "optim.max_drift=0.35",
                             "personalization.num_vectors_per_token=1"],
    "1 vector drift 0.4": ["optim.embedding_reg_weight=0", "optim.max_drift=0.4",
                           "personalization.num_vectors_per_token=1"],
    "1 vector drift 0.5": ["optim.embedding_reg_weight=0", "optim.max_drift=0.5",
                           "personalization.num_vectors_per_token=1"],
    "1 vector drift 0.7": ["optim.embedding_reg_weight=0", "optim.max_drift=0.7",
                           "personalization.num_vectors_per_token=1"],
    "4 vectors reg 0.2": ["optim.embedding_reg_weight=0.2", "personalization.num_vectors_per_token=4"],
    "4 vectors reg 0.3": ["optim.embedding_reg_weight=0.3", "personalization.num_vectors_per_token=4"],
    "4 vectors drift 0.35": ["optim.embedding_reg_weight=0", "optim.max_drift=0.35",
                             "personalization.num_vectors_per_token=4"],
    "4 vectors drift 0.3": ["optim.embedding_reg_weight=0", "optim.max_drift=0.3",
                            "personalization.num_vectors_per_token=4"],
    "3 vectors drift 0.35": ["optim.embedding_reg_weight=0", "optim.max_drift=0.35",
                             "personalization.num_vectors_per_token=3"],
    "1 vector anchor 0.5": ["personalization.num_vectors_per_token=1", "optim.edit_anchor_weight=0.5", EDIT_WORDS],
    "1 vector anchor 1": ["personalization.num_vectors_per_token=1", "optim.edit_anchor_weight=1", EDIT_WORDS],
    "1 vector anchor 2": ["personalization.num_vectors_per_token=1", "optim.edit_anchor_weight=2", EDIT_WORDS],
    "1 vector anchor 3": ["personalization.num_vectors_per_token=1", "optim.edit_anchor_weight=3", EDIT_WORDS],
    "norm = vocab": ["optim.norm_control=vocab"],
    "norm cap 1.5x": ["optim.norm_control=cap", "optim.norm_cap=1.5"],
    "min-SNR 5": ["optim.min_snr_gamma=5"],
}
# from the baseline's files: (name, which file, blend strength, prompt weight)
USE_TIME = [
    ("EMA 0.99", "ema", 1.0, None),
    ("blend 0.8", "raw", 0.8, None),
    ("blend 0.6", "raw", 0.6, None),
    ("blend 0.4", "raw", 0.4, None),
    ("(*:0.8)", "raw", 1.0, 0.8),
    ("(*:0.6)", "raw", 1.0, 0.6),
]


@dataclass
class Job:
    stage: str
    lever: str
    concept: tuple[str, str]
    seed: int
    sets: list[str]
    init_word: str
    sizes: tuple[float, float] = world.SIZES
    templates: tuple[str, ...] = CHOOSE_TEMPLATES
    colours: tuple[str, ...] | None = None  # the edits judged (None: every other colour)

    @property
    def key(self) -> str:
        return f"{self.stage}|{self.lever}|{' '.join(self.concept)}|{self.seed}"


def jobs(stage: str, seeds: int, levers: list[str], concepts: int = 2,
         conditions: list[str] | None = None) -> list[Job]:
    found = []
    if stage == "choose":
        for concept in CHOOSE[:concepts]:
            for seed in range(seeds):
                for lever in levers:
                    base = TRAINED["baseline (toy.yaml before)"]
                    found.append(Job("choose", lever, concept, seed, base + TRAINED[lever], concept[1]))
    else:
        for concept in CHECK[:concepts]:
            for seed in range(seeds):
                found.append(Job("check", "toy.yaml", concept, seed, [], concept[1]))
                found.append(Job("check, drawn differently", "toy.yaml", concept, seed, [], concept[1], SMALL,
                                 CHECK_TEMPLATES))
                found.append(Job("check, init word shape", "toy.yaml", concept, seed, [], "shape"))
                found.append(Job("check, edit words held out", "toy.yaml", concept, seed,
                                 [f"optim.edit_words=[{', '.join(TAUGHT)}]"], concept[1],
                                 colours=tuple(c for c in world.COLOURS if c not in TAUGHT)))
    return [j for j in found if stage == "choose" or condition(j) in conditions] if conditions else found


def condition(job: Job) -> str:
    """A check job's condition as --conditions names it: `as chosen`, `drawn differently`, `init word shape`,
    `edit words held out`."""
    return job.stage.removeprefix("check").strip(", ") or "as chosen"


def train_one(job: Job, work: Path) -> Path:
    """Train `job`; returns the run folder."""
    from textinv.config import build_config
    from textinv.training.loop import train

    folder = work / job.key.replace("|", "_").replace(" ", "-") / "pictures"
    world.write_concept(folder, *job.concept, n=4, seed=100 + job.seed, sizes=job.sizes)
    cfg = build_config("toy", [*job.sets, f"train.seed={job.seed}", "log.val_loss_every=0"], **{
        "data.paths": [str(folder)], "personalization.initializer_words": [job.init_word],
        "log.output_dir": str(folder.parent / "runs"), "log.name": "bench"})
    return train(cfg).run_dir


def judge(pipe, embedding: Path, job: Job, *, strength: float = 1.0, weight: float | None = None) -> dict:
    """Identity and editability of one embedding file (blended toward the init word at `strength`, and written
    in prompts as `(*:weight)` when a weight is given)."""
    from textinv.config import load_config
    from textinv.formats.files import load_embedding
    from textinv.generation.sampling import txt2img
    from textinv.models.embeddings import add_embeddings
    from textinv.models.strength import blend_toward_init
    from textinv.toy.judge import accuracy
    from textinv.toy.proof import edit_share

    log = load_config("toy").log
    emb = load_embedding(embedding)
    if strength != 1.0:
        emb = blend_toward_init(emb, strength, pipe, init_word=job.init_word)
    word = f"<bench-{time.monotonic_ns()}>"
    emb.tokens[0].name = word
    add_embeddings(pipe, [(embedding, emb)])
    shown = f"({word}:{weight})" if weight is not None else word
    seed = 1000 + 17 * job.seed
    images = [g.image for g in txt2img(pipe, f"a photo of {shown}", n=SAMPLES, steps=log.sample_steps,
                                       cfg=log.guidance_scale, seed=seed)]
    edits = edit_share(pipe, shown, job.concept, templates=job.templates, samples=EDIT_SAMPLES, seed=seed,
                       steps=log.sample_steps, guidance=log.guidance_scale, colours=job.colours)
    return {"identity": accuracy(images, *job.concept), "editability": edits,
            "norm": float(emb.tokens[0].vectors.norm(dim=1).mean())}


def run(stage: str, seeds: int, out: Path, levers: list[str], concepts: int = 2,
        conditions: list[str] | None = None, shard: tuple[int, int] = (0, 1)) -> None:
    from textinv.models.loading import load_pipeline

    torch.set_num_threads(1)  # the toy model's tensors are small; one thread does not collapse under load
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {json.loads(line)["key"] for line in results.read_text().splitlines()} if results.exists() else set()
    pipe = load_pipeline("toy")
    k, n = shard
    for job in jobs(stage, seeds, levers, concepts, conditions)[k::n]:
        if job.key in done:
            continue
        t0 = time.perf_counter()
        run_dir = train_one(job, out / "work")
        seconds = time.perf_counter() - t0
        rows = [(job.lever, run_dir / "embeddings" / "bench.pt", 1.0, None)]
        if job.lever.startswith("baseline"):
            rows += [(name, run_dir / "embeddings" / ("bench-ema.pt" if f == "ema" else "bench.pt"), s, w)
                     for name, f, s, w in USE_TIME]
        for name, path, strength, weight in rows:
            scores = judge(pipe, path, job, strength=strength, weight=weight)
            record = {"key": job.key if name == job.lever else f"{job.key}|{name}", "stage": job.stage,
                      "lever": name, "concept": " ".join(job.concept), "seed": job.seed, **scores,
                      "train_seconds": round(seconds, 1)}
            with results.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


def table(out: Path) -> list[dict]:
    """Mean and spread of identity and editability per (stage, lever), over concepts and seeds."""
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["stage"], r["lever"]), []).append(r)
    rows = []
    for (stage, lever), rs in groups.items():
        ids, eds = [r["identity"] for r in rs], [r["editability"] for r in rs]
        rows.append({"stage": stage, "lever": lever, "runs": len(rs), "identity": statistics.mean(ids),
                     "identity_min": min(ids), "editability": statistics.mean(eds), "editability_min": min(eds),
                     "norm": statistics.mean(r["norm"] for r in rs),
                     "concepts": sorted({r["concept"] for r in rs}),
                     "per_seed": ", ".join(f"s{r['seed']} {r['identity']:.0%} / {r['editability']:.0%}"
                                           for r in sorted(rs, key=lambda r: (r["concept"], r["seed"])))})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| stage | lever | runs | identity, mean (min) | editability, mean (min) | each run | vector norm |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['lever']} | {r['runs']} | {r['identity']:.0%} ({r['identity_min']:.0%}) | "
              f"{r['editability']:.0%} ({r['editability_min']:.0%}) | {r['per_seed']} | {r['norm']:.3f} |")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=110)
    at: dict[tuple[float, float], list[str]] = {}  # levers at the same point share one label
    for r in rows:
        marker = {"choose": "o", "check": "s"}.get(r["stage"], "D")
        ax.scatter(r["editability"], r["identity"], marker=marker, s=36)
        name = r["lever"] if r["stage"] == "choose" else f"{r['lever']} ({r['stage']})"
        at.setdefault((round(r["editability"], 2), round(r["identity"], 2)), []).append(name)
    top = 0
    for (x, y), names in sorted(at.items()):
        if y >= 0.97:  # the crowded top row: labels stacked below it
            top += 1
        ax.annotate(", ".join(names), (x, y), fontsize=7, xytext=(4, 3 if y < 0.97 else -10 * top),
                    textcoords="offset points", arrowprops={"arrowstyle": "-", "lw": 0.4} if y >= 0.97 else None)
    ax.axhline(0.9, color="grey", lw=0.6, ls="--")
    ax.axvline(0.6, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("editability: 'a photo of a <colour> *' in the colour asked for")
    ax.set_ylabel("identity: 'a photo of *' is the concept")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("toy model: identity against editability, mean of concepts x seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["choose", "check", "report"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-levers"))
    parser.add_argument("--levers", default=",".join(TRAINED), help="for choose: which trained levers")
    parser.add_argument("--concepts", type=int, default=2, help="how many of the stage's held-out concepts")
    parser.add_argument("--conditions", help="for check: which of its conditions, comma-separated: as chosen, drawn "
                        "differently, init word shape (default all)")
    parser.add_argument("--plot", type=Path, help="draw the trade-off picture here (report)")
    parser.add_argument("--shard", default="0/1", help="K/N: run every Nth job from the Kth, so N processes (one "
                        "per core) share a stage; each appends to the same results.jsonl")
    args = parser.parse_args(argv)
    if args.stage == "report":
        rows = table(args.out)
        print_table(rows)
        if args.plot:
            plot(rows, args.plot)
        return
    levers = [name for name in args.levers.split(",") if name]
    unknown = [name for name in levers if name not in TRAINED]
    if unknown:
        sys.exit(f"unknown lever(s) {unknown}; known: {list(TRAINED)}")
    run(args.stage, args.seeds, args.out, levers, args.concepts,
        [c.strip() for c in args.conditions.split(",")] if args.conditions else None,
        tuple(int(x) for x in args.shard.split("/")))


if __name__ == "__main__":
    main()
