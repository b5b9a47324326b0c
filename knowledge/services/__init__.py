"""Writes for the knowledge app. Every function takes the organization explicitly
(keyword-only) and is atomic. Modules by subject; import from here."""

from knowledge.services.agents import (  # noqa: F401
    CONFIG_KEYS,
    CONFIG_LIMITS,
    agent_config_validate,
    agent_create,
    agent_update,
)
from knowledge.services.ingestion import (  # noqa: F401
    BatchResult,
    DocumentInput,
    IngestResult,
    document_ingest,
    document_input_validate,
    documents_delete,
    documents_ingest,
    enqueue,
    ingestion_job_create,
    ingestion_job_run,
)
from knowledge.services.stats import Drift, stats_apply, stats_reconcile  # noqa: F401
