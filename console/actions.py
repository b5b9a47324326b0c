"""The console's actions: each checks its permission, calls the same service the API
calls (with the organization named explicitly) and goes back to the page it came from."""

import json

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError

from console.views import agent as agent_page
from console.views import agent_or_404, require
from core.errors import DomainError
from knowledge.models import Agent, Document
from knowledge.services import (
    DocumentInput,
    agent_delete_request,
    document_delete_request,
    document_input_validate,
    ingestion_job_create,
)
from knowledge.uploads import file_document
from search.apis import search_request_parse
from search.selection import AgentSelection
from search.selectors import search_agent_get
from search.services import search

MAX_FILES = 50


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in exc.detail.items())
    fields = "; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in exc.fields.items())
    return f"{exc.message} {fields}".strip()


def _agent_url(agent_id: int, **query) -> str:
    suffix = "&".join(f"{k}={v}" for k, v in query.items() if v)
    return reverse("console:agent", args=[agent_id]) + (f"?{suffix}" if suffix else "")


def _active(request, agent_id: int, *perms: str) -> Agent:
    require(request, *perms)
    agent = agent_or_404(request, agent_id)
    if agent.status != Agent.Status.ACTIVE:
        raise Http404
    return agent


@require_POST
def playground(request, agent_id: int):
    """A search through the search service, as the API runs it (and counted as any search)."""
    agent = _active(request, agent_id, "knowledge.view_chunk")
    form = request.POST
    body = {
        "query": form.get("query", ""), "mode": form.get("mode", "hybrid"), "include_parent": "include_parent" in form,
        "chunk_context": {"before": _int(form.get("before")), "after": _int(form.get("after"))},
    }  # fmt: skip
    if form.get("limit", "").strip():
        body["limit"] = _int(form.get("limit"))
    answer, error = None, ""
    try:
        body["filters"] = json.loads(form.get("filters") or "{}")
        request_ = search_request_parse(body)
        selection = AgentSelection([search_agent_get(org=agent.organization, slug=agent.slug)])
        answer = search(org=agent.organization, selection=selection, request=request_, scope=("agent", agent.slug), explain=True)
    except ValueError:
        error = "filters: not valid JSON."
    except (DomainError, ValidationError) as exc:
        error = _error_text(exc)
    return agent_page(request, agent_id, playground={"form": form, "answer": answer, "error": error})


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


@require_POST
def upload(request, agent_id: int):
    """Files (.md, .txt, .html) as one ingestion job, as the API's batch upload queues them."""
    agent = _active(request, agent_id, "knowledge.add_document")
    files = request.FILES.getlist("files")
    if not files or len(files) > MAX_FILES:
        messages.error(request, f"Choose between 1 and {MAX_FILES} files.")
        return redirect(_agent_url(agent.pk))
    try:
        docs = []
        for upload_ in files:
            doc = DocumentInput(**file_document(upload_))
            document_input_validate(doc)
            docs.append(doc)
        job = ingestion_job_create(org=agent.organization, agent=agent, docs=docs)
    except DomainError as exc:
        messages.error(request, _error_text(exc))
        return redirect(_agent_url(agent.pk))
    messages.success(request, f"Ingestion job {job.pk} queued for {len(docs)} file(s).")
    return redirect(_agent_url(agent.pk) + "#jobs")


def _document(request, document_id: int, perm: str) -> tuple[Document, Agent]:
    require(request, perm)
    doc = Document.unscoped.select_related("agent", "organization").filter(pk=document_id).first()
    if doc is None:
        raise Http404
    return doc, _active(request, doc.agent_id, perm)


@require_POST
def reingest(request, document_id: int):
    """A document's new version from a file, under the document's key."""
    doc, agent = _document(request, document_id, "knowledge.change_document")
    if "file" not in request.FILES:
        return redirect("console:document", document_id)
    try:
        fields = {**file_document(request.FILES["file"]), "key": doc.key, "title": doc.title, "metadata": doc.metadata}
        document_input_validate(DocumentInput(**fields))
        job = ingestion_job_create(org=agent.organization, agent=agent, docs=[DocumentInput(**fields)])
    except DomainError as exc:
        messages.error(request, _error_text(exc))
        return redirect("console:document", document_id)
    messages.success(request, f"Ingestion job {job.pk} queued for {doc.key}.")
    return redirect(_agent_url(agent.pk) + "#jobs")


@require_POST
def delete_document(request, document_id: int):
    doc, agent = _document(request, document_id, "knowledge.delete_document")
    try:
        result = document_delete_request(org=agent.organization, agent=agent, key=doc.key)
    except DomainError as exc:
        messages.error(request, _error_text(exc))
        return redirect("console:document", document_id)
    if result.job is not None:
        messages.success(request, f"Deletion job {result.job.pk} queued for {doc.key}.")
    else:
        messages.success(request, f"Deleted {doc.key} ({result.chunks} chunks).")
    return redirect(_agent_url(agent.pk))


@require_POST
def delete_agent(request, agent_id: int):
    agent = _active(request, agent_id, "knowledge.delete_agent")
    job = agent_delete_request(org=agent.organization, agent=agent, user=request.user)
    messages.success(request, f"Deletion job {job.pk} queued for {agent.slug}.")
    return redirect(_agent_url(agent.pk) + "#jobs")
