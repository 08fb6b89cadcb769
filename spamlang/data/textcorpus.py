"""Text corpora: documents read from user files or a built-in corpus, stored as a prepared corpus folder.

A prepared corpus folder holds ``documents.jsonl`` (one ``{"text": ...}`` object per line, UTF-8) and ``meta.json``
(document and character counts, the sources, and the sha256 of ``documents.jsonl``, which names the corpus in every
run record). ``spamlang prepare-text`` writes one; the built-in corpora are prepared into the cache on first use.
Documents go to the train, val or test split by a hash of (split seed, text), so a document's split never depends on
the order or number of the others, and duplicate documents always land in the same split.
"""
from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm.auto import tqdm

from spamlang import __version__
from spamlang.errors import SpamLangError
from spamlang.system import atomic

FORMAT = "spamlang.text/1"
SPLITS = ("train", "val", "test")
SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")
TXT_DOCUMENTS = ("paragraph", "line", "file")
_GENSIM_DATA = ("test", "test_data")


def cache_root() -> Path:
    """Where built-in corpora, tokenizers and token arrays are cached: ``$SPAMLANG_CACHE``, else
    ``$XDG_CACHE_HOME/spamlang``, else ``~/.cache/spamlang``."""
    if os.environ.get("SPAMLANG_CACHE"):
        return Path(os.environ["SPAMLANG_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spamlang"


def split_of(text: str, seed: int, holdout: float) -> str:
    """The split of one document: test with probability ``holdout``, val with ``holdout``, else train."""
    u = int.from_bytes(hashlib.sha256(f"{seed}\0{text}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < holdout else "val" if u < 2 * holdout else "train"


# -- reading user files ---------------------------------------------------------------------------------------------
def _utf8_lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="strict", newline="") as f:
            yield from f
    except UnicodeDecodeError as exc:
        raise SpamLangError(f"{path}: not UTF-8 text ({exc.reason}: byte {exc.object[exc.start]:#04x})") from None


def _plain(path: Path, documents: str) -> Iterator[str]:
    """Documents of a plain-text file: blank-line separated paragraphs, single lines, or the whole file."""
    if documents == "file":
        yield "".join(_utf8_lines(path))
        return
    block: list[str] = []
    for line in _utf8_lines(path):
        if documents == "line":
            yield line.rstrip("\r\n")
        elif line.strip():
            block.append(line)
        elif block:
            yield "".join(block).rstrip("\r\n")
            block = []
    if block:
        yield "".join(block).rstrip("\r\n")


def _jsonl(path: Path) -> Iterator[str]:
    for number, line in enumerate(_utf8_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpamLangError(f"{path} line {number}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise SpamLangError(f"{path} line {number}: expected an object with a string field 'text'")
        yield obj["text"]


def _parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SpamLangError(f"{path}: reading parquet needs pyarrow (pip install 'spamlang[text]')") from None
    try:
        file = pq.ParquetFile(path)
        if "text" not in file.schema_arrow.names:
            raise SpamLangError(f"{path}: no 'text' column (columns: {', '.join(file.schema_arrow.names)})")
        for batch in file.iter_batches(columns=["text"], batch_size=4096):
            yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str))
    except (OSError, ValueError) as exc:  # pyarrow's errors subclass these
        raise SpamLangError(f"{path}: not a readable parquet file ({exc})") from None


def _files(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                      and not any(part.startswith(".") for part in p.relative_to(source).parts))
    if not source.is_file():
        raise SpamLangError(f"corpus source not found: {source}")
    return [source]


def read_documents(sources: Iterable[str | os.PathLike], txt_documents: str = "paragraph") -> Iterator[str]:
    """The non-blank documents of files and folders (folders: every ``.txt``, ``.md``, ``.jsonl`` and ``.parquet``
    file under them, in path order). ``.jsonl``: the ``text`` field of each line; ``.parquet``: the ``text`` column;
    any other file is plain UTF-8 text, split into documents as ``txt_documents`` says."""
    if txt_documents not in TXT_DOCUMENTS:
        raise SpamLangError(f"txt_documents must be one of {', '.join(TXT_DOCUMENTS)}, got {txt_documents!r}")
    for source in sources:
        for path in _files(Path(source)):
            reader = _jsonl(path) if path.suffix == ".jsonl" else _parquet(path) if path.suffix == ".parquet" \
                else _plain(path, txt_documents)
            yield from (doc for doc in reader if doc.strip())


# -- built-in corpora -----------------------------------------------------------------------------------------------
def _gensim_file(name: str) -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise SpamLangError("the built-in text corpora ship with gensim's test data: pip install 'spamlang[text]'")
    path = Path(spec.submodule_search_locations[0]).joinpath(*_GENSIM_DATA, name)
    if not path.is_file():
        raise SpamLangError(f"gensim is installed but lacks its test data file {path.name}")
    return path


def _wiki() -> Iterator[str]:
    """Articles of gensim's shortened English Wikipedia dump, markup removed by gensim's ``filter_wiki``."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    with bz2.open(_gensim_file("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")) as f:
        for _title, text, _page in extract_pages(f):
            article = filter_wiki(text).strip()
            if article and not article.upper().startswith("#REDIRECT"):
                yield article


def _lee() -> Iterator[str]:
    """The Lee background corpus: 300 Australian news articles, one per line."""
    yield from _plain(_gensim_file("lee_background.cor"), "line")


#: name -> (description, documents); the text ships inside a PyPI package, so nothing is downloaded at run time
BUILTIN: dict[str, tuple[str, Callable[[], Iterator[str]]]] = {
    "gensim-wiki": ("106 English Wikipedia articles, 0.48M words (gensim test data; CC BY-SA)", _wiki),
    "gensim-lee": ("300 news articles of the Lee corpus, 60k words (gensim test data)", _lee),
}


# -- prepared corpus folders ----------------------------------------------------------------------------------------
def _write(documents: Iterable[str], folder: Path, sources: list[str], progress: bool = False) -> dict:
    """Write ``documents`` and their meta into ``folder`` (a temporary folder the caller publishes)."""
    digest, count, characters = hashlib.sha256(), 0, 0
    with open(folder / "documents.jsonl", "wb") as f, \
            tqdm(unit="doc", disable=not progress, desc="prepare corpus") as bar:
        for doc in documents:
            line = (json.dumps({"text": doc}, ensure_ascii=False) + "\n").encode()
            f.write(line)
            digest.update(line)
            count, characters = count + 1, characters + len(doc)
            bar.update(1)
    if count == 0:
        raise SpamLangError(f"no documents in {', '.join(sources)} (empty or blank)")
    meta = {"format": FORMAT, "documents": count, "characters": characters, "sha256": digest.hexdigest(),
            "sources": sources, "spamlang_version": __version__}
    atomic.write_text(folder / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def prepare(sources: list[str], out: str | os.PathLike, *, txt_documents: str = "paragraph", force: bool = False,
            progress: bool = False) -> dict:
    """Read user files (or one built-in corpus by name) into the prepared corpus folder ``out``, atomically."""
    if not sources:
        raise SpamLangError("no corpus sources given")
    if len(sources) == 1 and sources[0] in BUILTIN and not Path(sources[0]).exists():
        documents = BUILTIN[sources[0]][1]()
    else:
        documents = read_documents(sources, txt_documents)
    with atomic.output_folder(out, force, is_prepared, "prepared corpus (documents.jsonl, meta.json)") as tmp:
        return _write(documents, tmp, [str(s) for s in sources], progress)


def is_prepared(folder: Path) -> bool:
    """Whether ``folder`` holds a prepared corpus and nothing else: documents.jsonl and a meta.json of FORMAT."""
    if {p.name for p in folder.iterdir()} - {"documents.jsonl", "meta.json"}:
        return False
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def check_available(corpus: str) -> None:
    """SpamLangError now, before any run, when ``corpus`` cannot be read here: a built-in corpus not yet prepared
    without gensim (which ships its text), or a folder that is not a prepared corpus."""
    if corpus in BUILTIN:
        prepared = (cache_root() / "corpora" / corpus / "meta.json").is_file()
        if not prepared and importlib.util.find_spec("gensim") is None:
            raise SpamLangError(f"the built-in corpus '{corpus}' ships with gensim, which is not installed: pip "
                                f"install 'spamlang[text]'")
        return
    locate(corpus)


def locate(corpus: str) -> Path:
    """The prepared folder of ``corpus``: a built-in name (prepared into the cache on first use) or a folder."""
    if corpus in BUILTIN:
        folder = cache_root() / "corpora" / corpus
        if not (folder / "meta.json").is_file():
            with atomic.cache_folder(folder) as tmp:
                _write(BUILTIN[corpus][1](), tmp, [corpus])
        return folder
    folder = Path(corpus).expanduser()
    if not (folder / "meta.json").is_file() or not (folder / "documents.jsonl").is_file():
        raise SpamLangError(f"corpus '{corpus}' is neither a built-in corpus ({', '.join(BUILTIN)}) nor a prepared "
                            f"corpus folder (make one with 'spamlang prepare-text')")
    return folder


def read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpamLangError(f"{folder / 'meta.json'}: not readable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SpamLangError(f"{folder}: not a prepared corpus of format {FORMAT}")
    return meta


def documents(folder: Path, sha256: str) -> Iterator[str]:
    """The documents of a prepared folder, checked against its sha256 once the last one is read."""
    digest = hashlib.sha256()
    with open(folder / "documents.jsonl", "rb") as f:
        for line in f:
            digest.update(line)
            yield json.loads(line)["text"]
    if digest.hexdigest() != sha256:
        raise SpamLangError(f"{folder}: documents.jsonl does not match the sha256 in meta.json (changed since "
                            f"it was prepared)")
