"""`textinv eval`: score embeddings (or every checkpoint of a run) on a fixed grid of seeds x prompts, and pick
the best step.

Each candidate (a checkpoint, or the run's step 0: the init word's vectors) generates `seeds` images of each
prompt, the same seeds for every candidate. Scores (see `textinv.evaluation.scoring`):

- identity: samples of the identity prompt (`a photo of *`) against the training pictures, CLIP and (when a
  DINO model is given) DINO; on the shipped toy model, the share of those samples the toy's judge sees as the
  concept of the training pictures;
- editability: the CLIP text-image score of the edit prompts' samples (context edits and attribute edits)
  against the same prompts with the placeholder replaced by the init word (as the paper does); on the toy model,
  the share of the samples of `a photo of a <colour> *` (each of the world's other colours, several templates)
  that the judge sees as the concept's shape in the colour asked for;
- the init word itself is scored the same way as a baseline row.

The best step (`best_row`) weighs both: each checkpoint's balance is the lower of its identity and its
editability, each as a fraction of the best checkpoint's; among the checkpoints whose balance is within `margin`
of the best balance, the one with the highest identity; ties go to the earlier step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from textinv.errors import ConfigError, DataError
from textinv.reporting import SILENT, Reporter
from textinv.runs import Run

IDENTITY_PROMPT = "a photo of {}"
EDIT_PROMPTS = (
    "a photo of {} on a beach",  # background
    "a watercolor painting of {}",  # style
    "a photo of {} with a red hat",  # an added object
    "a {} made of gold",  # material
    "a photo of a blue {}",  # attribute: colour (where textual inversion fails most: the word overrides it)
    "a photo of a wooden {}",  # attribute: material
)
# The toy model's edits: the concept in each of the world's other colours, in several of the object templates the
# toy model was trained on ({colour} is the colour asked for, {} the placeholder).
TOY_EDIT_PROMPTS = (
    "a photo of a {colour} {}",
    "a rendering of a {colour} {}",
    "a close-up photo of the {colour} {}",
)
DEFAULT_MARGIN = 0.1


@dataclass
class Candidate:
    """One embedding to score; `embedding` None is the init-word baseline."""

    label: str
    step: int | None
    embedding: object | None  # textinv.formats.embedding.Embedding
    file: str | None = None


@dataclass
class Row:
    label: str
    step: int | None
    file: str | None
    baseline: bool
    identity: float | None  # the metric the best step uses: CLIP identity, or the toy judge's share
    identity_clip: float | None = None
    identity_dino: float | None = None
    editability: float | None = None
    per_prompt: dict[str, float] = field(default_factory=dict)  # editability of each edit prompt
    grid: str | None = None  # the contact sheet written for it, relative to the run folder


@dataclass
class EvalSettings:
    seeds: int = 4
    seed: int = 0
    steps: int = 50
    cfg: float = 7.5
    identity_prompt: str = IDENTITY_PROMPT
    edit_prompts: tuple[str, ...] = EDIT_PROMPTS
    toy_edit_prompts: tuple[str, ...] = TOY_EDIT_PROMPTS  # what edit_prompts become on the toy model
    margin: float = DEFAULT_MARGIN
    clip: str | None = None  # hub id or folder; None: no CLIP scores
    dino: str | None = None


@dataclass
class EvalResult:
    rows: list[Row]
    best: Row | None
    init_word: str
    model: str
    data: str
    settings: EvalSettings
    notes: list[str] = field(default_factory=list)
    embeddings: dict[str, object] = field(default_factory=dict, repr=False)  # label -> Embedding

    def to_json(self) -> dict:
        s = asdict(self.settings)
        s["edit_prompts"] = list(s["edit_prompts"])
        s["toy_edit_prompts"] = list(s["toy_edit_prompts"])
        return {
            "model": self.model,
            "data": self.data,
            "init_word": self.init_word,
            "settings": s,
            "rule": best_rule_text(self.settings.margin, self.rows),
            "rows": [asdict(r) for r in self.rows],
            "best": None if self.best is None else {"label": self.best.label, "step": self.best.step,
                                                    "file": self.best.file},
            "notes": self.notes,
        }


def best_rule_text(margin: float, rows: list[Row] | None = None) -> str:
    """The best-step rule in words; without editability scores in `rows`, the part that applies."""
    if rows is not None and all(r.editability is None for r in rows):
        return "highest identity among the checkpoints (ties: the earlier step); editability was not measured"
    return ("highest identity among the checkpoints whose balance (the lower of identity and editability, each as "
            f"a fraction of the best checkpoint's) is at least {1 - margin:.0%} of the best balance (ties: the "
            "earlier step)")


def balance(row: Row, top_identity: float, top_editability: float) -> float:
    """The lower of the row's identity and editability, each as a fraction of the best checkpoint's: 1 for a
    checkpoint as recognisable and as editable as the best, low for one that gave up either."""
    def share(x: float | None, top: float) -> float:
        return 0.0 if x is None else x / top if top > 0 else 1.0

    return min(share(row.identity, top_identity), share(row.editability, top_editability))


def best_row(rows: list[Row], margin: float = DEFAULT_MARGIN) -> Row | None:
    """The checkpoint to keep: highest identity among the well-balanced ones (see module doc). The init word
    (the baseline row) is never picked; without editability scores, the highest identity."""
    candidates = [r for r in rows if not r.baseline and r.identity is not None]
    if not candidates:
        return None
    edits = [r.editability for r in candidates if r.editability is not None]
    if edits:
        top_identity, top_edit = max(r.identity for r in candidates), max(edits)
        scores = {id(r): balance(r, top_identity, top_edit) for r in candidates}
        floor = (1 - margin) * max(scores.values())
        candidates = [r for r in candidates if scores[id(r)] >= floor]
    return max(candidates, key=lambda r: (r.identity, -(r.step if r.step is not None else 0)))


# --- what to score ----------------------------------------------------------------------------------------------


@dataclass
class Targets:
    candidates: list[Candidate]
    run: Run | None = None  # set when a run folder was given: eval.json and the grids are written into it
    model: str | None = None
    data: str | None = None
    init_word: str | None = None
    num_vectors: int = 1
    placeholder: str = "*"


def find_targets(paths: list[Path]) -> Targets:
    """Candidates from run folders (their checkpoints, plus step 0) and embedding files, in step order."""
    from textinv.formats.files import load_embedding

    t = Targets(candidates=[])
    runs = [p for p in paths if p.is_dir() and Run.is_run(p)]
    if len(runs) > 1:
        raise ConfigError("pass one run folder at a time (or embedding files)")
    for path in paths:
        if path in runs:
            t.run = Run.open(path)
            cfg = t.run.config()
            t.model, t.init_word = cfg.model.source, cfg.personalization.initializer_words[0]
            t.data = cfg.data.paths[0] if cfg.data.paths else None
            t.num_vectors = cfg.personalization.num_vectors_per_token
            t.placeholder = cfg.personalization.placeholder_strings[0]
            t.candidates.append(Candidate(label="step 0", step=0, embedding=None))  # built once the model loads
            t.candidates += _run_checkpoints(t.run)
            continue
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder; pass a run folder (logs/<name>_<time>) or embeddings")
        emb = load_embedding(path)
        t.candidates.append(Candidate(label=path.name, step=emb.step, embedding=emb, file=str(path)))
        if t.init_word is None and emb.init_words:
            t.init_word = next(iter(emb.init_words.values()))
    return t


def _run_checkpoints(run: Run) -> list[Candidate]:
    """One candidate per step: a checkpoint, or a final file that records its step (the first file of a step wins)."""
    from textinv.formats.files import load_embedding

    found: dict[int, Candidate] = {}
    for named_step, f in run.embedding_files():
        emb = load_embedding(f)
        step = named_step if named_step is not None else emb.step
        if step is not None and step not in found:
            found[step] = Candidate(label=f"step {step}", step=step, embedding=emb, file=str(f))
    if not found:
        raise ConfigError(f"{run.path} has no embeddings yet; train it first (or pass embedding files)")
    return [found[s] for s in sorted(found)]


# --- scoring ----------------------------------------------------------------------------------------------------


def evaluate(
    paths: list[Path],
    *,
    data: Path | None = None,
    model: str | None = None,
    init_word: str | None = None,
    settings: EvalSettings | None = None,
    device: str | None = None,
    write: bool = True,
    reporter: Reporter = SILENT,
) -> EvalResult:
    """Score every candidate in `paths`; with a run folder and `write`, save eval.json and the grids into it."""
    from textinv.models.loading import load_pipeline

    s = settings or EvalSettings()
    t, data, init_word = check_before_loading(paths, data=data, model=model, init_word=init_word, settings=s)
    pipe = load_pipeline(model or t.model, device=device)
    toy = pipe.textinv.kind == "toy"
    if toy:  # the judge scores colour edits: the toy model knows no beaches or watercolours
        s = dataclasses.replace(s, edit_prompts=s.toy_edit_prompts)
    notes: list[str] = []
    if t.run is not None:
        t.candidates[0].embedding = _initial_embedding(pipe, t.placeholder, init_word, t.num_vectors)
    scorer = Evaluator(pipe, data, s, toy, notes, reporter)
    out = t.run if write else None  # the run folder the grids and eval.json go into
    todo = [Candidate(label=f"init word ({init_word})", step=None, embedding=None), *t.candidates]
    total = len(todo) * scorer.images_per_candidate()  # the count the progress goes by: every image made
    reporter.start("eval", total, note=f"scoring {len(todo)} candidate(s): {total} images, {s.seeds} seed(s) "
                                       "per prompt")
    rows, embeddings = [], {}
    try:
        for i, cand in enumerate(todo):
            rows.append(scorer.score(cand, i, init_word, out))
            if cand.embedding is not None:
                embeddings[cand.label] = cand.embedding
    finally:
        reporter.finish("eval")
    result = EvalResult(rows=rows, best=best_row(rows, s.margin), init_word=init_word, model=pipe.textinv.name,
                        data=str(data), settings=s, notes=notes, embeddings=embeddings)
    if out is not None:
        out.write_eval(result.to_json())
    return result


def check_before_loading(paths: list[Path], *, data: Path | None, model: str | None, init_word: str | None,
                         settings: EvalSettings) -> tuple[Targets, Path, str]:
    """What `evaluate`'s arguments already show, each in one line before any model loads: the settings (guidance,
    seed, steps), the targets readable, each embedding's family the model's (told from the model's files: the family
    first, before anything else is asked for), the training pictures there, an init word known. Returns the
    targets, the pictures' folder and the init word."""
    from textinv.generation.sampling import check_request
    from textinv.models.peek import check_fit
    from textinv.pictures import check_image_folder

    s = settings
    check_request(n=s.seeds, steps=s.steps, cfg=s.cfg, seed=s.seed)
    if not 0 <= s.margin <= 1:
        raise ConfigError(f"--margin {s.margin}: a share of the best editability, between 0 and 1 (0.1 is typical)")
    t = find_targets(paths)
    check_fit(model or t.model, None, [(c.file or c.label, c.embedding) for c in t.candidates if c.embedding])
    data = data or (Path(t.data) if t.data else None)
    if data is None:
        raise ConfigError("pass --data DIR: the folder of training pictures to compare the samples with")
    check_image_folder(data)
    init_word = init_word or t.init_word
    if not init_word:
        raise ConfigError("the embedding does not record its init word; pass --init-word WORD (e.g. cat)")
    return t, data, init_word


def check_copy_best(out: Path, *, force: bool = False) -> None:
    """Before any scoring: `--copy-best OUT` can be written (an embedding file name, not there yet unless `force`,
    in a folder that can be written)."""
    from textinv.atomic import check_writable
    from textinv.errors import EmbeddingFormatError, OutputExistsError
    from textinv.formats import EMBEDDING_SUFFIXES

    if out.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise EmbeddingFormatError(f"--copy-best {out}: cannot tell the format from {out.suffix or 'no extension'!r};"
                                   f" end the name in {', '.join(EMBEDDING_SUFFIXES)}")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to overwrite it")
    check_writable(out, "--copy-best", folder=False)


def _initial_embedding(pipe, placeholder: str, init_word: str, n: int):
    """The run's step 0: the init word's token vectors in every encoder, spread over the placeholder's vectors as
    training does."""
    from textinv.formats.embedding import Embedding, Token
    from textinv.models.loading import text_encoders
    from textinv.models.tokens import init_vectors

    parts = {key: init_vectors(tokenizer, encoder.get_input_embeddings().weight, init_word, n)[0].cpu()
             for key, _, tokenizer, encoder in text_encoders(pipe)}
    return Embedding(tokens=[Token.from_parts(placeholder, parts)], step=0, init_words={placeholder: init_word})


class Evaluator:
    """The fixed parts of an evaluation (model, references, scoring models), and the scoring of one candidate."""

    def __init__(self, pipe, data: Path, s: EvalSettings, toy: bool, notes: list[str], reporter: Reporter):
        from textinv.pictures import load_folder, to_pil

        self.pipe, self.s, self.toy, self.reporter = pipe, s, toy, reporter
        self.scratch = None
        self.made, self.label, self.word = 0, "", ""  # images made, the candidate scored and its word: for progress
        from textinv.models.denoiser import default_side

        size = default_side(pipe)
        found, warnings = load_folder(data, size)
        for w in warnings:
            reporter.message(f"warning: {w}")
        self.references = [to_pil(img.pixels) for img in found]
        self.clip = self.dino = None
        self.concept = None
        if toy:
            from textinv.toy.judge import judge

            verdicts = [judge(im) for im in self.references]
            self.concept = max(set(verdicts), key=verdicts.count)
            if self.concept.colour is None or self.concept.shape is None:
                raise DataError(f"the toy judge sees no one colour and shape in {data}; pass toy-world pictures")
            notes.append(f"toy model: identity is the share of samples the toy's judge sees as a "
                         f"{self.concept.colour} {self.concept.shape}, editability the share of 'a photo of a "
                         f"<colour> *' samples (every other colour) it sees as a {self.concept.shape} of that "
                         "colour; CLIP and DINO are skipped")
            return
        from textinv.evaluation.scoring import load_clip, load_dino

        if s.clip:
            self.clip = load_clip(s.clip)
            self.ref_clip = self.clip.image_features(self.references)
        else:
            notes.append("no CLIP model: no identity or editability scores (pass --clip)")
        if s.dino:
            self.dino = load_dino(s.dino)
            self.ref_dino = self.dino.image_features(self.references)

    def _unsaved(self, emb, index: int) -> Path:
        """A file for an embedding made here (step 0): loading records the file and its hash."""
        import tempfile

        from textinv.formats.files import save_embedding

        if self.scratch is None:
            self.scratch = tempfile.TemporaryDirectory(prefix="textinv-eval-")
        return save_embedding(emb, Path(self.scratch.name) / f"candidate-{index}.pt", force=True)

    def images_per_candidate(self) -> int:
        """The images `score` makes for one candidate: the identity prompt's, and the edit prompts' with CLIP (on
        the toy model, each edit prompt once per colour other than the concept's)."""
        if self.toy:
            from textinv.toy import world

            return (1 + len(self.s.edit_prompts) * (len(world.COLOURS) - 1)) * self.s.seeds
        prompts = 1 + (len(self.s.edit_prompts) if self.clip is not None else 0)
        return prompts * self.s.seeds

    def _images(self, prompt: str) -> list:
        from textinv.generation.sampling import txt2img

        shown = prompt.replace(self.word, "*") if self.word.startswith("<textinv-eval-") else prompt
        self.reporter.status(f"{self.label}: drawing '{shown}', {self.s.seeds} images")
        images = [g.image for g in txt2img(self.pipe, prompt, n=self.s.seeds, steps=self.s.steps, cfg=self.s.cfg,
                                           seed=self.s.seed)]
        self.made += len(images)
        self.reporter.advance("eval", self.made)
        return images

    def _toy_edits(self, template: str, word: str, sheet: list) -> float:
        """The share of `template`'s samples, over every colour but the concept's, that the toy judge sees as the
        concept's shape in the colour asked for; each colour's samples become a row of `sheet`."""
        from textinv.toy import world
        from textinv.toy.judge import Verdict, judge

        right = total = 0
        for colour in (c for c in world.COLOURS if c != self.concept.colour):
            images = self._images(template.format(word, colour=colour))
            sheet.append(images)
            right += sum(judge(im) == Verdict(colour, self.concept.shape) for im in images)
            total += len(images)
        return right / total

    def score(self, cand: Candidate, index: int, init_word: str, run: Run | None = None) -> Row:
        """Score one candidate; with a `run`, its contact sheet is written into the run's eval grids."""
        from textinv.evaluation.scoring import image_similarity, text_similarity
        from textinv.models.embeddings import add_embeddings

        word, self.label, self.word = init_word, cand.label, ""
        if cand.embedding is not None:  # a fresh placeholder per candidate, so no two collide in the tokenizer
            import copy

            emb = copy.deepcopy(cand.embedding)
            emb.tokens = emb.tokens[:1]
            word = self.word = emb.tokens[0].name = f"<textinv-eval-{index}>"
            path = Path(cand.file) if cand.file else self._unsaved(emb, index)
            add_embeddings(self.pipe, [(path, emb)])
        row = Row(label=cand.label, step=cand.step, file=cand.file, baseline=cand.embedding is None, identity=None)
        samples = self._images(self.s.identity_prompt.format(word))
        sheet = [samples]
        if self.toy:
            from textinv.toy.judge import judge

            row.identity = sum(judge(im) == self.concept for im in samples) / len(samples)
            for template in self.s.edit_prompts:
                row.per_prompt[template] = self._toy_edits(template, word, sheet)
            if row.per_prompt:
                row.editability = sum(row.per_prompt.values()) / len(row.per_prompt)
        else:
            if self.clip is not None:
                row.identity = row.identity_clip = image_similarity(self.clip.image_features(samples), self.ref_clip)
            if self.dino is not None:
                row.identity_dino = image_similarity(self.dino.image_features(samples), self.ref_dino)
            if self.clip is not None:
                for prompt in self.s.edit_prompts:
                    images = self._images(prompt.format(word))
                    sheet.append(images)
                    text = self.clip.text_features([prompt.format(init_word)])
                    row.per_prompt[prompt] = text_similarity(self.clip.image_features(images), text)
                row.editability = sum(row.per_prompt.values()) / len(row.per_prompt)
        if run is not None:
            from textinv.atomic import atomic_path
            from textinv.pictures import contact_sheet

            name = "init-word" if cand.embedding is None else f"step-{cand.step:06d}" if cand.step is not None \
                else Path(cand.label).stem
            with atomic_path(run.eval_grids / f"{name}.png") as tmp:
                contact_sheet([im for line in sheet for im in line], columns=self.s.seeds).save(tmp, format="PNG")
            row.grid = str((run.eval_grids / f"{name}.png").relative_to(run.path))
        return row


def copy_best(result: EvalResult, out: Path, *, force: bool = False) -> Path:
    """Write the best step's embedding to `out` (format from the extension)."""
    from textinv.formats.files import save_embedding

    if result.best is None:
        raise ConfigError("no step has an identity score, so none is best; pass --clip (or use the toy model)")
    return save_embedding(result.embeddings[result.best.label], out, force=force)
