from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from core.fields import NOT_BLANK, StrictCharField
from core.parsers import JSONParser
from knowledge import selectors, services
from knowledge.chunking import CONTENT_TYPES
from knowledge.deletion_apis import ChunksDeleteMixin, DeletedOutput, DocumentDeleteMixin
from knowledge.models import Agent, Document
from knowledge.services import DocumentInput
from knowledge.uploads import file_document
from tenants.api import PAGE_PARAMETERS, OrgAPIView, paginated
from tenants.audit import keys_summary
from tenants.errors import conflict, invalid, not_found, too_large


class DocumentOutput(serializers.Serializer):
    key = serializers.CharField()
    title = serializers.CharField()
    source = serializers.CharField()
    content_type = serializers.CharField()
    status = serializers.CharField()
    error = serializers.CharField()
    size_bytes = serializers.IntegerField()
    chunk_count = serializers.IntegerField()
    version = serializers.IntegerField()
    content_hash = serializers.CharField()
    metadata = serializers.JSONField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class IngestionJobOutput(serializers.Serializer):
    id = serializers.IntegerField()
    agent = serializers.CharField(source="agent.slug")
    status = serializers.CharField()
    total_documents = serializers.IntegerField()
    processed_documents = serializers.IntegerField()
    total_chunks = serializers.IntegerField()
    processed_chunks = serializers.IntegerField()
    added = serializers.IntegerField()
    updated = serializers.IntegerField()
    unchanged = serializers.IntegerField()
    failed = serializers.IntegerField()
    errors = serializers.JSONField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class DocumentInputSerializer(serializers.Serializer):
    # Not white space only (the patterns document what the service checks).
    key = StrictCharField(max_length=512, validators=[NOT_BLANK])
    text = StrictCharField(trim_whitespace=False, validators=[NOT_BLANK])
    title = StrictCharField(max_length=500, required=False, default="", allow_blank=True)
    source = StrictCharField(max_length=2000, required=False, default="", allow_blank=True)
    content_type = serializers.ChoiceField(choices=CONTENT_TYPES, required=False, default="markdown")
    metadata = serializers.DictField(required=False, default=dict)


class AgentScopedAPIView(OrgAPIView):
    def get_agent(self, slug: str, *, for_write: bool = False) -> Agent:
        agent = selectors.agent_get(org=self.org, slug=slug)
        if agent is None:
            raise not_found("Agent not found.")
        if for_write and agent.status != Agent.Status.ACTIVE:
            raise conflict("agent_deleting", "Agent is being deleted; it accepts no changes.")
        return agent


def _file_document(request) -> dict:
    return {
        **file_document(request.FILES["file"]),
        "key": request.data.get("key") or request.FILES["file"].name,
        "title": request.data.get("title", ""),
        "source": request.data.get("source", request.FILES["file"].name),
        "metadata": _json_field(request.data.get("metadata")),
    }


def _json_field(value):
    import json

    if value in (None, ""):
        return {}
    try:
        return json.loads(value)
    except ValueError as exc:
        raise invalid("metadata", "Must be a JSON object.") from exc


class DocumentListCreateApi(AgentScopedAPIView):
    query_parameters = {"GET": ("limit", "offset", "status")}
    parser_classes = [JSONParser, MultiPartParser]

    @extend_schema(
        operation_id="agents_documents_list",
        responses=paginated(DocumentOutput, "DocumentPage"),
        parameters=[*PAGE_PARAMETERS, OpenApiParameter("status", str, enum=Document.Status.values)],
    )
    def get(self, request, slug):
        agent = self.get_agent(slug)
        wanted = request.query_params.get("status")
        if wanted is not None and wanted not in Document.Status.values:
            raise invalid("status", f"Must be one of {', '.join(Document.Status.values)}.")
        return self.paginate(selectors.document_list(org=self.org, agent=agent, status=wanted), DocumentOutput)

    @extend_schema(request=DocumentInputSerializer, responses={200: DocumentOutput, 201: DocumentOutput, 202: IngestionJobOutput})
    def post(self, request, slug):
        agent = self.get_agent(slug, for_write=True)
        raw = _file_document(request) if "file" in request.FILES else request.data
        data = DocumentInputSerializer(data=raw)
        data.is_valid(raise_exception=True)
        doc = DocumentInput(**data.validated_data)
        services.document_input_validate(doc)
        if len(doc.text.encode()) > settings.LORE_SYNC_INGEST_MAX_BYTES:
            job = services.ingestion_job_create(org=self.org, agent=agent, docs=[doc], api_key=request.auth)
            self.audit("documents.upsert_requested", "agent", slug, {"ingestion_job": job.pk, **keys_summary([doc.key])})
            return Response({"async": True, "ingestion": IngestionJobOutput(job).data}, status=status.HTTP_202_ACCEPTED)
        # Interactive: the embedding call is bounded to answer within the worker's timeout.
        result, batch = services.document_ingest(org=self.org, agent=agent, doc=doc, interactive=True)
        self.audit("documents.upserted", "agent", slug, {**batch.summary(), **keys_summary([doc.key])})
        document = selectors.document_get(org=self.org, agent=agent, key=doc.key)
        body = {
            **DocumentOutput(document).data,
            "unchanged": result.outcome == "unchanged",
            "chunks_added": result.chunks_added,
            "chunks_removed": result.chunks_removed,
            "embedded": batch.embedded,
            "cache_hits": batch.cache_hits,
        }
        return Response(body, status=status.HTTP_201_CREATED if result.outcome == "added" else status.HTTP_200_OK)


class DocumentDetailApi(DocumentDeleteMixin, AgentScopedAPIView):
    @extend_schema(responses=DocumentOutput)
    def get(self, request, slug, key):
        document = selectors.document_get(org=self.org, agent=self.get_agent(slug), key=key)
        if document is None:
            raise not_found("Document not found.")
        return Response(DocumentOutput(document).data)


class DocumentBatchApi(AgentScopedAPIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DocumentBatchInput"  # a component name of its own in the schema

        documents = DocumentInputSerializer(many=True, allow_empty=False)

    @extend_schema(request=InputSerializer, responses={202: IngestionJobOutput})
    def post(self, request, slug):
        agent = self.get_agent(slug, for_write=True)
        documents = request.data.get("documents") if isinstance(request.data, dict) else None
        if isinstance(documents, list) and len(documents) > settings.LORE_MAX_BATCH_DOCUMENTS:
            raise too_large("documents", f"At most {settings.LORE_MAX_BATCH_DOCUMENTS} documents per batch.")
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        docs = [DocumentInput(**d) for d in data.validated_data["documents"]]
        keys = set()
        for i, doc in enumerate(docs):
            services.document_input_validate(doc, prefix=f"documents[{i}].")
            if doc.key in keys:
                raise invalid(f"documents[{i}].key", "Duplicate key in this batch.")
            keys.add(doc.key)
        if sum(services.document_bytes(d) for d in docs) > settings.LORE_MAX_BATCH_BYTES:
            raise too_large("documents", f"A batch may hold at most {settings.LORE_MAX_BATCH_BYTES} bytes of text and metadata.")
        job = services.ingestion_job_create(org=self.org, agent=agent, docs=docs, api_key=request.auth)
        self.audit("documents.upsert_requested", "agent", slug, {"ingestion_job": job.pk, **keys_summary(d.key for d in docs)})
        return Response(IngestionJobOutput(job).data, status=status.HTTP_202_ACCEPTED)

    # The document whose key is literally "batch", as GET / DELETE /documents/{key}.
    @extend_schema(operation_id="agents_documents_batch_key_retrieve", responses=DocumentOutput)
    def get(self, request, slug):
        return DocumentDetailApi.as_view()(request._request, slug=slug, key="batch")

    @extend_schema(operation_id="agents_documents_batch_key_destroy", responses={200: DeletedOutput, 202: DeletedOutput})
    def delete(self, request, slug):
        return DocumentDetailApi.as_view()(request._request, slug=slug, key="batch")


class ChunksDeleteApi(ChunksDeleteMixin, AgentScopedAPIView):
    pass


class IngestionJobApi(OrgAPIView):
    @extend_schema(responses=IngestionJobOutput)
    def get(self, request, job_id):
        job = selectors.ingestion_job_get(org=self.org, job_id=job_id)
        if job is None:
            raise not_found("Ingestion job not found.")
        return Response(IngestionJobOutput(job).data)
