"""The console's pages: thin views over the apps' selectors. Every view is wrapped by the
admin site (staff only, login redirect: console/urls.py) and checks the view permissions of
the models its page shows; the actions (console/actions.py) check theirs."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, JsonResponse
from django.template.response import TemplateResponse

from console import charts, selectors
from knowledge import activity_selectors
from knowledge.models import Agent, AgentStats, Chunk, Document, Section
from knowledge.selectors import organization_usage
from search.selectors import hot_chunks, hot_chunks_of_organization
from tenants.models import Organization

BIN_MINUTES = 10
DOCUMENTS_SHOWN = 100
AGENTS_PER_PAGE = 50
CHUNKS_SHOWN = 200
# The organization page's hot chunks come from its busiest agents (by searches).
HOT_AGENTS = 20


def require(request, *perms: str) -> None:
    if not request.user.has_perms(perms):
        raise PermissionDenied


def page(request, template: str, title: str, **context) -> TemplateResponse:
    return TemplateResponse(request, template, {**admin.site.each_context(request), "title": title, **context})


def _charts(**scope) -> list:
    bins = activity_selectors.activity_series(bin_minutes=BIN_MINUTES, **scope)
    return charts.activity_charts(bins)


def _window(request) -> int:
    value = request.GET.get("window", "7")
    return min(max(int(value), 1), 90) if value.isdigit() else 7


def overview(request):
    user = request.user
    see_orgs, see_agents = user.has_perm("tenants.view_organization"), user.has_perm("knowledge.view_agent")
    see_jobs = user.has_perms(["knowledge.view_ingestionjob", "knowledge.view_deletionjob"])
    bins = activity_selectors.activity_series(bin_minutes=BIN_MINUTES)
    busiest_orgs = []
    if see_orgs:
        counts = activity_selectors.busiest_organizations()
        names = Organization.objects.in_bulk([org_id for org_id, _ in counts])
        busiest_orgs = [(names[org_id], n) for org_id, n in counts if org_id in names]
    return page(
        request, "console/overview.html", "Console",
        health=selectors.health(), totals=selectors.totals(), day=activity_selectors.totals(bins),
        charts=charts.activity_charts(bins), busiest_orgs=busiest_orgs,
        busiest_agents=selectors.busiest_agents() if see_agents else [], see_jobs=see_jobs,
        jobs=selectors.job_rows() if see_jobs else [], cache_backend=selectors.cache_backend(),
    )  # fmt: skip


def organization(request, org_id: int):
    require(request, "tenants.view_organization", "knowledge.view_agent")
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        raise Http404
    stats = AgentStats.objects.for_org(org).select_related("agent").exclude(agent__status="deleted").order_by("agent__slug")
    # A page of agents at a time: an organization may have thousands (the stats rows are one
    # per agent, so counting them is cheap).
    agents_page = Paginator(stats, AGENTS_PER_PAGE).get_page(request.GET.get("page"))
    busiest = list(stats.filter(search_count__gt=0).order_by("-search_count").values_list("agent_id", flat=True)[:HOT_AGENTS])
    see_chunks = request.user.has_perm("knowledge.view_chunk")
    see_jobs = request.user.has_perms(["knowledge.view_ingestionjob", "knowledge.view_deletionjob"])
    return page(
        request, "console/organization.html", f"Organization {org.slug}", org=org, agents_page=agents_page,
        hot_agents=HOT_AGENTS,
        usage=organization_usage(org=org), charts=_charts(org=org), window=_window(request),
        hot=hot_chunks_of_organization(org=org, agent_ids=busiest, days=_window(request), limit=20) if see_chunks and busiest else [],
        jobs=selectors.recent_jobs(org=org) if see_jobs else [], see_jobs=see_jobs, jobs_query=f"org={org.pk}",
    )  # fmt: skip


def agent_or_404(request, agent_id: int) -> Agent:
    require(request, "knowledge.view_agent")
    agent = Agent.unscoped.select_related("organization", "stats").filter(pk=agent_id).first()
    if agent is None:
        raise Http404
    return agent


def agent(request, agent_id: int, *, playground: dict | None = None):
    agent = agent_or_404(request, agent_id)
    org, user = agent.organization, request.user
    documents, hot = [], []
    status = request.GET.get("status") or ""
    if user.has_perm("knowledge.view_document"):
        rows = Document.objects.for_org(org).filter(agent=agent)
        if status in Document.Status.values:
            rows = rows.filter(status=status)
        # Index document_org_agent_status_idx or the unique key index: a page of keys, no COUNT.
        documents = list(rows.order_by("key")[:DOCUMENTS_SHOWN])
    if user.has_perm("knowledge.view_chunk") and agent.status == Agent.Status.ACTIVE:
        hot = hot_chunks(org=org, agent_id=agent.pk, days=_window(request), limit=20)
    see_jobs = user.has_perms(["knowledge.view_ingestionjob", "knowledge.view_deletionjob"])
    return page(
        request, "console/agent.html", f"Agent {org.slug}/{agent.slug}", agent=agent, org=org, stats=agent.stats,
        charts=_charts(org=org, agent=agent), documents=documents, documents_shown=DOCUMENTS_SHOWN, status=status,
        statuses=Document.Status.values, hot=hot, window=_window(request), see_jobs=see_jobs,
        jobs=selectors.job_rows(org=org, agent_id=agent.pk) if see_jobs else [], playground=playground or {},
        jobs_query=f"org={org.pk}&agent={agent.pk}",
        can_upload=user.has_perm("knowledge.add_document") and agent.status == Agent.Status.ACTIVE,
        can_search=user.has_perm("knowledge.view_chunk") and agent.status == Agent.Status.ACTIVE,
        can_delete=user.has_perm("knowledge.delete_agent") and agent.status == Agent.Status.ACTIVE,
        modes=["hybrid", "vector", "keyword"],
    )  # fmt: skip


def document(request, document_id: int):
    require(request, "knowledge.view_document", "knowledge.view_chunk")
    doc = Document.unscoped.select_related("agent", "organization").filter(pk=document_id).first()
    if doc is None:
        raise Http404
    org = doc.organization
    # Index chunk_org_doc_ord_idx / section_org_agent_doc_idx: this document's rows only.
    chunks = list(Chunk.objects.for_org(org).filter(document_id=doc.pk).order_by("ordinal").only(
        "key", "ordinal", "text", "char_count", "section_id", "metadata")[:CHUNKS_SHOWN])  # fmt: skip
    sections = list(Section.objects.for_org(org).filter(agent_id=doc.agent_id, document_id=doc.pk).order_by("ordinal"))
    return page(
        request, "console/document.html", f"Document {doc.key}", doc=doc, agent=doc.agent, org=org, chunks=chunks,
        sections=sections, chunks_shown=CHUNKS_SHOWN, can_change=request.user.has_perm("knowledge.change_document") and doc.agent.status == "active",
        can_delete=request.user.has_perm("knowledge.delete_document") and doc.agent.status == "active",
    )  # fmt: skip


def jobs_json(request):
    """The jobs a page shows, with their progress (console/static/console/jobs.js polls it)."""
    require(request, "knowledge.view_ingestionjob", "knowledge.view_deletionjob")
    org_id, agent_id = request.GET.get("org", ""), request.GET.get("agent", "")
    org = Organization.objects.filter(pk=int(org_id)).first() if org_id.isdigit() else None
    rows = selectors.job_rows(org=org, agent_id=int(agent_id) if agent_id.isdigit() else None)
    return JsonResponse({"jobs": [selectors.job_json(row) for row in rows]})
