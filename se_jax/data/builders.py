"""TFDS builders for the local QA data: NQ-open JSONL, EntityQuestions, BioASQ Task B
training JSON, any QA JSONL.

Each builder writes array_record files, which `tfds.data_source` reads with random access
and without TensorFlow. The source location is part of the builder config, and the config
name is a fingerprint of the source files, so a changed source is rebuilt, never mixed.

All builders share one feature schema (QA_FEATURES); examples are keyed by their stable id.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from pathlib import Path

from absl import logging

import tensorflow_datasets as tfds
from etils import epath

from se_jax.data import sources

QA_FEATURES = tfds.features.FeaturesDict({
    "id": tfds.features.Text(),
    "question": tfds.features.Text(),
    "answers": tfds.features.Sequence(tfds.features.Text()),
    "relation": tfds.features.Text(),  # EntityQuestions' Wikidata relation; "" elsewhere
})

_VERSION = tfds.core.Version("1.0.0")


@dataclasses.dataclass(eq=False)
class LocalSourceConfig(tfds.core.BuilderConfig):
    """Builder config naming the local source (a folder or a file).

    `folders`: for EntityQuestions, which of train/dev/test to build (empty = all present),
    so a run that reads only the test relations does not convert the 176k training ones.
    """
    source: str = ""
    folders: tuple[str, ...] = ()


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the local builders: array_record output, no download step."""
    VERSION = _VERSION
    BUILDER_CONFIGS = []

    # TFDS resolves a builder's code path through importlib resources, which for an
    # editable install needs the optional `importlib_resources` package; the path is only
    # used to look for a checksums file, which local builders do not have.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)


def _info(builder: tfds.core.DatasetBuilder, description: str) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=builder, description=description,
                                 features=QA_FEATURES, supervised_keys=None)


def _split_name(stem: str) -> str:
    """'NQ-open.efficientqa.dev.1.1' -> 'efficientqa_dev'; 'NQ-open.dev' -> 'dev'."""
    parts = stem.split(".")[1:] if stem.lower().startswith("nq-open") else stem.split(".")
    words = [p for p in parts if not p.isdigit()]
    return re.sub(r"[^a-z0-9_]", "_", "_".join(words).lower()) or "full"


def nq_open_files(folder: Path) -> dict[str, Path]:
    """{split: file} of NQ-open's JSONL files in `folder` (names from the files)."""
    files = {_split_name(f.name[:-len(".jsonl")]): f
             for f in sorted(folder.glob("NQ-open*.jsonl"))}
    if not files:
        raise FileNotFoundError(f"{folder}: no NQ-open*.jsonl files")
    return files


def entity_question_splits(root: Path, folders: tuple[str, ...] = ()
                           ) -> dict[str, tuple[str, tuple[str, ...] | None]]:
    """{split: (source folder, relations or None = all)} of EntityQuestions under `root`.

    For each source folder s present: "s", and "s_in_distribution" /
    "s_out_of_distribution" when any of SliCK's relations of that set is present (a
    partial copy may lack one altogether: no such split then).
    """
    wanted = folders or ("train", "dev", "test")
    found = [s for s in wanted if (root / s).is_dir()]
    if not found:
        raise FileNotFoundError(f"{root}: no train/, dev/ or test/ EntityQuestions folder")
    out: dict[str, tuple[str, tuple[str, ...] | None]] = {}
    for s in found:
        present = set(sources.entity_question_files(root, s))
        out[s] = (s, None)
        if present & set(sources.SLICK_IN_DISTRIBUTION):
            out[f"{s}_in_distribution"] = (s, sources.SLICK_IN_DISTRIBUTION)
        if present & set(sources.SLICK_OUT_OF_DISTRIBUTION):
            out[f"{s}_out_of_distribution"] = (s, sources.SLICK_OUT_OF_DISTRIBUTION)
    return out


def planned_splits(builder_name: str, source: str | Path,
                   folders: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The splits a local builder would have, read off the source files: builds nothing,
    writes nothing (for dry runs and plans). FileNotFoundError when the source is missing."""
    source = Path(source)
    _source_files(builder_name, source, tuple(sorted(folders)))
    if builder_name == "nq_open_jsonl":
        return tuple(nq_open_files(source))
    if builder_name == "entity_questions":
        return tuple(entity_question_splits(source, tuple(sorted(folders))))
    if builder_name == "bioasq_json":
        return ("train",)
    return ("full",)


class NqOpenJsonl(_LocalBuilder, skip_registration=True):
    """NQ-open (Lee et al. 2019) from its JSONL files: `NQ-open.<split>.jsonl` in a folder.

    Splits are named after the files: NQ-open.dev.jsonl -> "dev",
    NQ-open.efficientqa.dev.1.1.jsonl -> "efficientqa_dev", NQ-open.train.jsonl -> "train".
    """
    name = "nq_open_jsonl"

    def _files(self) -> dict[str, Path]:
        return nq_open_files(Path(self.builder_config.source))

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(self, "NQ-open questions with gold answer aliases, closed-book.")

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(path, split)
                for split, path in self._files().items()}

    def _generate_examples(self, path: Path, split: str):
        yield from sources.read_qa_jsonl(path, prefix=f"nq_open-{split}")


class EntityQuestions(_LocalBuilder, skip_registration=True):
    """EntityQuestions (Sciavolino et al. 2021): `<root>/{train,dev,test}/P*.<split>.json`.

    For each source split s present: "s" (all relations), "s_in_distribution" and
    "s_out_of_distribution" (SliCK's relation sets, Gekhman et al. 2024). Every example keeps
    its relation.
    """
    name = "entity_questions"

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(self, "EntityQuestions, one Wikidata relation per question template.")

    def _split_generators(self, dl_manager):
        root = self.builder_config.source
        return {name: self._generate_examples(root, folder, relations)
                for name, (folder, relations) in entity_question_splits(
                    Path(root), self.builder_config.folders).items()}

    def _generate_examples(self, root: str, split: str, relations):
        yield from sources.read_entity_questions(root, split, relations)


class BioAsqJson(_LocalBuilder, skip_registration=True):
    """BioASQ Task B training sets (Tsatsaronis et al. 2015), as the user downloads them
    from bioasq.org: every `*.json` of the folder ({"questions": [...]}) as one split,
    "train"; questions with an `exact_answer` (factoid, list, yes/no), read by
    `sources.read_bioasq`."""
    name = "bioasq_json"

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(self, "BioASQ Task B questions with exact answers, closed-book.")

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(self.builder_config.source)}

    def _generate_examples(self, root: str):
        yield from sources.read_bioasq(bioasq_files(Path(root)))


def bioasq_files(folder: Path) -> list[Path]:
    """The BioASQ training JSON files in `folder`."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{folder}: no BioASQ training *.json files (download "
                                f"Task B's training set from bioasq.org into this folder)")
    return files


class QaJsonl(_LocalBuilder, skip_registration=True):
    """Any JSONL file of {"question", "answers"} (or "answer") as one split, "full"
    ("all" is reserved by TFDS)."""
    name = "qa_jsonl"

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(self, f"Questions from {self.builder_config.source}.")

    def _split_generators(self, dl_manager):
        return {"full": self._generate_examples(self.builder_config.source)}

    def _generate_examples(self, path: str):
        yield from sources.read_qa_jsonl(path, prefix=Path(path).stem)


LOCAL_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    b.name: b for b in (NqOpenJsonl, EntityQuestions, BioAsqJson, QaJsonl)}


def _source_files(builder_name: str, source: Path, folders: tuple[str, ...]) -> list[Path]:
    if builder_name == "qa_jsonl":
        if not source.is_file():
            raise FileNotFoundError(f"{source}: QA JSONL file not found")
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: {builder_name} source folder not found")
    if builder_name == "nq_open_jsonl":
        pattern, files = "NQ-open*.jsonl", sorted(source.glob("NQ-open*.jsonl"))
    elif builder_name == "bioasq_json":
        pattern, files = "*.json", bioasq_files(source)
    else:
        pattern = "{" + ",".join(folders or ("train", "dev", "test")) + "}/P*.json"
        files = sorted(f for d in (folders or ("train", "dev", "test"))
                       for f in source.glob(f"{d}/P*.json"))
    if not files:
        raise FileNotFoundError(f"{source}: no {pattern} files for {builder_name}")
    return files


@contextlib.contextmanager
def _quiet():
    """TFDS logs a warning per builder construction ("Using custom data configuration") and
    prints two lines per build; our one log line per dataset build is enough."""
    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.set_verbosity(level)


def local_builder(builder_name: str, source: str | Path, data_dir: str | Path,
                  folders: tuple[str, ...] = ()) -> tfds.core.GeneratorBasedBuilder:
    """The builder of `builder_name` over `source`, prepared (array_record) under data_dir.

    Preparing is done once per source fingerprint; later calls only read dataset_info.json.
    """
    cls = LOCAL_BUILDERS[builder_name]
    source = Path(source).resolve()
    folders = tuple(sorted(folders))
    fingerprint = sources.source_fingerprint(_source_files(builder_name, source, folders))
    name = f"src_{fingerprint}" + "".join(f"_{f}" for f in folders)
    config = LocalSourceConfig(name=name, version=_VERSION, description=str(source),
                               source=str(source), folders=folders)
    with _quiet():
        builder = cls(config=config, data_dir=str(data_dir), file_format="array_record")
    with _quiet():
        prepared = builder.is_prepared()
    if not prepared:
        tfds.disable_progress_bar()
        logging.info("building %s from %s into %s", builder_name, source, builder.data_dir)
        try:
            with _quiet():
                builder.download_and_prepare()
        except AssertionError as e:  # TFDS refuses to write a split with no examples
            if "No examples were yielded" not in str(e):
                raise
            raise EmptySourceError(f"{source}: {builder_name} source has no questions "
                                   f"({e})") from None
    return builder


class EmptySourceError(ValueError):
    """A local source yields no questions for some split."""
