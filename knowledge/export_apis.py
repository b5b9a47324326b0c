"""Export endpoints: request an export (a job the workers write), follow it, download it.

Scopes: requesting and downloading an export need `admin` (the file holds every document
of the agents named, all of them by default); reading its status needs `read`."""

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response

from core.fields import StrictBooleanField, StrictSlugField
from knowledge import selectors, services
from knowledge.models import ExportJob
from tenants import audit
from tenants.api import OrgAPIView
from tenants.errors import conflict, not_found


class ExportJobOutput(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=ExportJob.Status.choices)
    include_vectors = serializers.BooleanField()
    agents = serializers.SerializerMethodField(help_text="agents exported")
    total_documents = serializers.IntegerField()
    processed_documents = serializers.IntegerField()
    total_chunks = serializers.IntegerField()
    processed_chunks = serializers.IntegerField()
    progress = serializers.FloatField(help_text="0 to 100")
    size_bytes = serializers.IntegerField(help_text="the file's size once completed")
    expires_at = serializers.DateTimeField(allow_null=True, help_text="when the file is deleted")
    error = serializers.CharField()
    download = serializers.SerializerMethodField(help_text="the file's path once completed, else null")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_agents(self, job) -> int:
        return len(job.agent_ids)

    def get_download(self, job) -> str | None:
        return f"/api/v1/exports/{job.pk}/download" if job.status == ExportJob.Status.COMPLETED else None


def _job_or_404(org, job_id: int) -> ExportJob:
    job = selectors.export_job_get(org=org, job_id=job_id)
    if job is None:
        raise not_found("Export not found.")
    return job


class ExportCreateApi(OrgAPIView):
    key_scopes = {"POST": "admin"}
    rate_scopes = {"POST": "write"}

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ExportCreateInput"

        agents = serializers.ListField(
            child=StrictSlugField(max_length=64), required=False, max_length=1000,
            help_text="slugs of the agents to export (default: every active agent)",
        )  # fmt: skip
        include_vectors = StrictBooleanField(required=False, default=False)

    @extend_schema(operation_id="exports_create", request=InputSerializer, responses={202: ExportJobOutput})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = services.export_job_create(
            org=self.org, agents=data.validated_data.get("agents"), include_vectors=data.validated_data["include_vectors"],
            api_key=request.auth, actor=audit.Actor.from_request(request),
        )  # fmt: skip
        return Response(ExportJobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class ExportDetailApi(OrgAPIView):
    @extend_schema(operation_id="exports_retrieve", responses=ExportJobOutput)
    def get(self, request, job_id):
        return Response(ExportJobOutput(_job_or_404(self.org, job_id)).data)


class _FirstRenderer(DefaultContentNegotiation):
    """Errors of the download are JSON whatever the client accepts (a client asking for
    application/gzip gets the error envelope, not a 406)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ExportDownloadApi(OrgAPIView):
    key_scopes = {"GET": "admin"}
    content_negotiation_class = _FirstRenderer

    @extend_schema(
        operation_id="exports_download",
        responses={(200, "application/gzip"): OpenApiResponse(
            OpenApiTypes.BINARY, description="the export file: gzip JSON Lines (README, Export file format)"
        )},
    )  # fmt: skip
    def get(self, request, job_id):
        job = _job_or_404(self.org, job_id)
        if job.status == ExportJob.Status.EXPIRED:
            raise not_found("Export expired: its file was deleted.")
        if job.status != ExportJob.Status.COMPLETED:
            raise conflict("export_not_ready", f"Export is {job.status}; download it once it is completed.")
        try:
            handle = open(services.export_path(job), "rb")
        except FileNotFoundError:
            raise not_found("Export expired: its file was deleted.") from None
        # Streamed from disk in blocks after the request's transaction has ended.
        return FileResponse(
            handle, as_attachment=True, filename=f"lore-export-{self.org.slug}-{job.pk}.jsonl.gz",
            content_type="application/gzip",
        )  # fmt: skip
