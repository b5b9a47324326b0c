"""Writes for the knowledge app. Every function takes the organization explicitly
(keyword-only) and is atomic. Modules by subject; import from here."""

from knowledge.services.activity import activity_rollup, activity_write  # noqa: F401
from knowledge.services.agents import (  # noqa: F401
    CONFIG_KEYS,
    CONFIG_LIMITS,
    agent_config_validate,
    agent_create,
    agent_settings,
    agent_update,
)
from knowledge.services.deletion import (  # noqa: F401
    DeleteResult,
    agent_delete_request,
    chunk_keys_validate,
    chunks_delete_request,
    deletion_job_cancel,
    deletion_job_retry,
    deletion_job_summary,
    document_delete_request,
    organization_delete_request,
)
from knowledge.services.deletion_runner import (  # noqa: F401
    deletion_job_run,
    deletion_job_slice,
    deletion_jobs_requeue_stale,
    deletion_jobs_stuck,
)
from knowledge.services.deletion_steps import documents_delete  # noqa: F401
from knowledge.services.export import (  # noqa: F401
    export_agents_resolve,
    export_job_create,
    export_job_run,
    export_job_slice,
    export_jobs_requeue_stale,
    export_path,
    export_to_file,
    export_totals,
    exports_expire,
)
from knowledge.services.importing import ImportResult, organization_import  # noqa: F401
from knowledge.services.ingestion import (  # noqa: F401
    BatchResult,
    DocumentInput,
    IngestResult,
    document_bytes,
    document_ingest,
    document_input_validate,
    documents_ingest,
    ingestion_job_create,
)
from knowledge.services.ingestion_runner import (  # noqa: F401
    ingestion_job_run,
    ingestion_job_slice,
    ingestion_jobs_requeue_stale,
)
from knowledge.services.jobs import jobs_audit_outcome, jobs_requeue_stale, jobs_run  # noqa: F401
from knowledge.services.stats import (  # noqa: F401
    Drift, stats_apply, stats_reconcile, term_counts_compact_all, usage_reconcile,
)
