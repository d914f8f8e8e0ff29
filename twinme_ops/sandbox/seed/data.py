"""What every store's seed shares: how much data a scale means, what was written, the corpus.

:class:`SeedCounts` turns a scale into row, key and file counts; :class:`SeedReport` is what a
seed wrote. The corpus and the vocabularies (topics, user agents, event types) appear in more
than one store; :func:`digest` and :func:`num` are the deterministic hashes the Redis keys and
the files are drawn from (PostgreSQL hashes server-side, see postgres.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

CORPUS = " ".join(
    [
        "TwinMe apprend de vos conversations pour construire un jumeau numérique fidèle.",
        "Your digital twin remembers the documents you shared and answers in your voice.",
        "Le modèle de langage s'appuie sur des extraits vectorisés de vos documents.",
        "Each message is embedded and compared with the closest chunks by cosine distance.",
        "Les sessions vocales sont transcrites puis résumées à la fin de chaque échange.",
        "A conversation keeps its context window short and retrieves what it needs.",
        "Votre jumeau peut rédiger un courriel, préparer une réunion ou résumer un rapport.",
        "Privacy first: every user only ever sees their own conversations and documents.",
        "Les documents importés sont découpés en fragments de quelques centaines de mots.",
        "The assistant cites the document name and the chunk it used to answer.",
        "Pendant la nuit, une sauvegarde complète protège la base, le cache et les fichiers.",
        "Latency matters: the p95 of an answer must stay well below two seconds.",
        "Le tableau de bord montre l'activité des sessions et les sujets les plus fréquents.",
        "Uploaded files are scanned, indexed and linked to the profile of their owner.",
        "Chaque réponse peut être notée, ce qui aide le jumeau à mieux vous ressembler.",
        "Rate limits protect the API from bursts while keeping interactive use fluid.",
        "Les préférences de style, de ton et de langue sont conservées dans votre profil.",
        "Search combines trigram similarity on titles with vector similarity on content.",
        "Un export JSON de toutes vos données est disponible à tout moment.",
        "When a session ends, its events are aggregated into daily usage statistics.",
        "Le jumeau numérique ne partage jamais vos informations avec un autre utilisateur.",
        "Meeting notes, contracts, CVs and research papers are the most common uploads.",
        "La recherche sémantique retrouve un passage même quand les mots diffèrent.",
        "Background jobs refresh embeddings when a document is replaced by a new version.",
    ]
)
# Text generation takes substrings of the corpus: keep room for the longest one.
CORPUS_LONG = (CORPUS + " ") * 3

TOPICS = [
    "Préparer la réunion",
    "Résumé du rapport",
    "Idées de voyage",
    "Draft an email",
    "Plan de formation",
    "Budget trimestriel",
    "Interview prep",
    "Notes de lecture",
]
AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile",
    "TwinMe-Android/2.14.0 (Pixel 8; Android 14)",
    "TwinMe-iOS/2.14.1 (iPhone15,2; iOS 17.5)",
]
EVENTS = ["login", "page_view", "message_sent", "document_uploaded", "search", "voice_call"]


@dataclass
class SeedCounts:
    """How much data a scale means; every table gets at least a handful of rows."""

    users: int
    conversations: int
    messages: int
    document_chunks: int
    sessions: int
    session_events: int
    redis_keys: int
    files: int

    @classmethod
    def for_scale(cls, scale: float) -> SeedCounts:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")

        def n(base: int, minimum: int) -> int:
            return max(minimum, round(base * scale))

        users = n(1000, 5)
        conversations = n(10_000, 2 * users)
        return cls(
            users=users,
            conversations=conversations,
            messages=n(200_000, 4 * conversations),
            document_chunks=n(8_000, 16),
            sessions=n(20_000, 10),
            session_events=n(180_000, 40),
            redis_keys=n(1000, 60),
            files=n(200, 20),
        )


@dataclass
class SeedReport:
    """What :func:`seed` wrote, for logs, the CLI and tests."""

    scale: float
    anchor: str
    rows: dict[str, int] = field(default_factory=dict)
    redis_keys: int = 0
    files: int = 0
    file_bytes: int = 0
    symlinks: int = 0
    database_size: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "anchor": self.anchor,
            "rows": dict(self.rows),
            "redis_keys": self.redis_keys,
            "files": self.files,
            "file_bytes": self.file_bytes,
            "symlinks": self.symlinks,
            "database_size": self.database_size,
            "seconds": round(self.seconds, 2),
        }


def digest(*parts: object) -> bytes:
    """The SHA-256 of the parts joined with ``|``: the same parts, the same bytes."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()


def num(*parts: object) -> int:
    """A deterministic non-negative 64-bit number drawn from the parts."""
    return int.from_bytes(digest(*parts)[:8], "big")
