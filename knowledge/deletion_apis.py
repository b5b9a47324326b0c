"""Deletion endpoints. DELETE on an agent or a document, and the chunk-keys delete, are
mixins: /agents/{slug} and /agents/{slug}/documents/{key} stay one view each (in apis and
document_apis, which supply `get_agent`), while the deletion code lives here."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response

from core.fields import StrictCharField
from knowledge import selectors, services
from knowledge.models import DeletionJob
from knowledge.services import deletion_job_summary
from tenants.api import PAGE_PARAMETERS, OrgAPIView, paginated
from tenants.audit import keys_summary
from tenants.errors import invalid, not_found


class DeletionJobOutput(serializers.Serializer):
    id = serializers.IntegerField()
    scope = serializers.CharField()
    status = serializers.CharField()
    agent = serializers.CharField(source="agent.slug", allow_null=True, default=None)
    document_key = serializers.CharField(source="target.document_key", allow_null=True, default=None)
    total_items = serializers.IntegerField()
    processed_items = serializers.IntegerField()
    progress = serializers.FloatField(help_text="0 to 100")
    eta_seconds = serializers.FloatField(allow_null=True)
    attempts = serializers.IntegerField()
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    heartbeat_at = serializers.DateTimeField(allow_null=True)


DeletedOutput = inline_serializer(
    "DeletedOutput",
    {
        "async": serializers.BooleanField(),
        "deleted": inline_serializer(
            "DeletedCounts", {"documents": serializers.IntegerField(), "chunks": serializers.IntegerField()}, required=False
        ),
        "deletion": DeletionJobOutput(required=False),
        "unknown_keys": serializers.ListField(child=serializers.CharField(), required=False),
    },
)


def _audit_deleted(view, result: services.DeleteResult, *, what: str, slug: str, keys: list[str]) -> None:
    """`<what>.deleted` with the counts, or `<what>.delete_requested` with the job doing it."""
    if result.job is not None:
        view.audit(f"{what}.delete_requested", "agent", slug, {"deletion_job": result.job.pk, **keys_summary(keys)})
    else:
        view.audit(f"{what}.deleted", "agent", slug, {"documents": result.documents, "chunks": result.chunks, **keys_summary(keys)})


def _deleted_response(result: services.DeleteResult, **extra) -> Response:
    """200 with what was deleted in the request, or 202 with the job doing it."""
    if result.job is not None:
        return Response({"async": True, "deletion": DeletionJobOutput(result.job).data, **extra}, status=status.HTTP_202_ACCEPTED)
    return Response({"async": False, "deleted": {"documents": result.documents, "chunks": result.chunks}, **extra})


class AgentDeleteMixin:
    @extend_schema(responses={202: DeletionJobOutput})
    def delete(self, request, slug):
        job = services.agent_delete_request(org=self.org, agent=self.get_agent(slug), api_key=request.auth)
        self.audit("agent.delete_requested", "agent", slug, {"deletion_job": job.pk, "chunks": job.total_items})
        return Response(DeletionJobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class DocumentDeleteMixin:
    @extend_schema(responses={200: DeletedOutput, 202: DeletedOutput})
    def delete(self, request, slug, key):
        agent = self.get_agent(slug, for_write=True)
        result = services.document_delete_request(org=self.org, agent=agent, key=key, api_key=request.auth)
        _audit_deleted(self, result, what="documents", slug=slug, keys=[key])
        return _deleted_response(result)


# Documents the body; services.chunk_keys_validate checks it (400/413 naming the field).
ChunksDeleteInput = inline_serializer(
    "ChunksDeleteInput", {"keys": serializers.ListField(child=StrictCharField(max_length=600), max_length=10_000)}
)


class ChunksDeleteMixin:
    @extend_schema(request=ChunksDeleteInput, responses={200: DeletedOutput, 202: DeletedOutput})
    def post(self, request, slug):
        agent = self.get_agent(slug, for_write=True)
        keys = request.data.get("keys") if isinstance(request.data, dict) else None
        result = services.chunks_delete_request(org=self.org, agent=agent, keys=keys, api_key=request.auth)
        _audit_deleted(self, result, what="chunks", slug=slug, keys=[k for k in dict.fromkeys(keys) if k not in result.unknown_keys])
        return _deleted_response(result, unknown_keys=result.unknown_keys)


def _job_or_404(org, job_id: int) -> DeletionJob:
    job = selectors.deletion_job_get(org=org, job_id=job_id)
    if job is None:
        raise not_found("Deletion job not found.")
    return job


class DeletionJobListApi(OrgAPIView):
    query_parameters = {"GET": ("limit", "offset", "status", "scope")}
    @extend_schema(
        operation_id="deletions_list",
        responses=paginated(DeletionJobOutput, "DeletionJobPage"),
        parameters=[
            *PAGE_PARAMETERS,
            OpenApiParameter("status", str, enum=DeletionJob.Status.values),
            OpenApiParameter("scope", str, enum=list(selectors.API_DELETION_SCOPES)),
        ],
    )
    def get(self, request):
        wanted = {}
        for name, choices in (("status", DeletionJob.Status.values), ("scope", selectors.API_DELETION_SCOPES)):
            value = request.query_params.get(name)
            if value is not None and value not in choices:
                raise invalid(name, f"Must be one of {', '.join(choices)}.")
            wanted[name] = value
        return self.paginate(selectors.deletion_job_list(org=self.org, **wanted), DeletionJobOutput)


class DeletionJobDetailApi(OrgAPIView):
    @extend_schema(responses=DeletionJobOutput)
    def get(self, request, job_id):
        return Response(DeletionJobOutput(_job_or_404(self.org, job_id)).data)


class DeletionJobCancelApi(OrgAPIView):
    key_scopes = {"POST": "admin"}
    rate_scopes = {"POST": "read"}
    @extend_schema(request=None, responses=DeletionJobOutput)
    def post(self, request, job_id):
        job = services.deletion_job_cancel(org=self.org, job=_job_or_404(self.org, job_id))
        self.audit("deletion_job.cancelled", "deletion_job", job.pk, deletion_job_summary(job))
        return Response(DeletionJobOutput(job).data)


class DeletionJobRetryApi(OrgAPIView):
    key_scopes = {"POST": "admin"}
    rate_scopes = {"POST": "read"}
    @extend_schema(request=None, responses={202: DeletionJobOutput})
    def post(self, request, job_id):
        job = services.deletion_job_retry(org=self.org, job=_job_or_404(self.org, job_id))
        self.audit("deletion_job.retried", "deletion_job", job.pk, deletion_job_summary(job))
        return Response(DeletionJobOutput(job).data, status=status.HTTP_202_ACCEPTED)
