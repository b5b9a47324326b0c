"""Console bench (issue 16): server time of every console page on the search benchmark's
data, 200k chunks over 1,000 agents, with a day of activity history for every agent.

    .venv/bin/python bench/console.py            # ~5 min on 2 cores (load, history, timings)
    .venv/bin/python bench/console.py --reuse    # keep the data a previous run loaded

Data: its own embedded PostgreSQL (bench/.data-console): bench/search.py's organization
(harness.load_synthetic, same agent sizes), its graphs, then 24 hours of minute rows of
activity for the organization, the site and each of the 1,000 agents (1.44M agent rows:
every agent busy every minute, the worst case for the charts), a week of hot-chunk
accesses (20 chunks per agent per day) and a few finished jobs.

Each page is requested N times (after one warm-up) in this process through Django's test
client, logged in as a superuser, production settings: the time is the server's (view,
templates, queries), without a network or a web server in front.
"""

import argparse
import time

import harness  # first: sets up sys.path and the environment

HEAD_SIZES = [30000, 26000, 23000, 21000]


def fill_history(org_id: int) -> None:
    """24 hours of minute rows for the site, the organization and every agent (SQL: fast).
    Kept as they are when a previous run wrote them within the last 10 minutes (--reuse)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT max(start) > now() - interval '10 minutes' FROM knowledge_agentactivity")
        if cursor.fetchone()[0]:
            return
        cursor.execute("TRUNCATE knowledge_agentactivity, knowledge_organizationactivity, knowledge_siteactivity")
        minutes = "generate_series(date_trunc('minute', now()) - interval '24 hours', date_trunc('minute', now()), interval '1 minute')"
        counters = (
            "searches, cache_hits, latency_ms_sum, latency_buckets, embedding_calls, embedding_errors,"
            " documents_ingested, chunks_ingested, errors"
        )
        # A day's rhythm with some noise, so the charts have something to show.
        wave = "(600 + 300 * sin(extract(epoch FROM m) / 9000) + 80 * random())::bigint"
        values = "{n}, {n} / 3, {n} * 12.5, ARRAY[0, {n} / 10, {n} / 4, {n} / 3, {n} / 5, {n} / 10, 2, 1, 0, 0, 0, 0]::bigint[], 3, 0, 1, 9, 0"
        cursor.execute(
            f"INSERT INTO knowledge_siteactivity (period, start, {counters}) SELECT 60, m, {values.format(n=wave)} FROM {minutes} m"
        )
        cursor.execute(
            f"INSERT INTO knowledge_organizationactivity (organization_id, period, start, {counters})"
            f" SELECT %s, 60, m, {values.format(n=wave)} FROM {minutes} m",
            [org_id],
        )
        cursor.execute(
            f"INSERT INTO knowledge_agentactivity (organization_id, agent_id, period, start, {counters})"
            f" SELECT %s, a.id, 60, m, {values.format(n='(1 + mod(a.id, 7))')} FROM knowledge_agent a, {minutes} m"
            " WHERE a.organization_id = %s",
            [org_id, org_id],
        )
        # Hot chunks: 20 chunks of each agent accessed on each of the last 7 days.
        cursor.execute("TRUNCATE search_chunkaccess")
        cursor.execute(
            "INSERT INTO search_chunkaccess (organization_id, agent_id, chunk_id, day, access_count, score_sum, last_accessed_at)"
            " SELECT c.organization_id, c.agent_id, c.id, d::date, 1 + mod(c.id, 13), (1 + mod(c.id, 13)) * 0.5, now()"
            " FROM (SELECT id, organization_id, agent_id, row_number() OVER (PARTITION BY agent_id ORDER BY id) AS r"
            "       FROM knowledge_chunk WHERE organization_id = %s) c,"
            " generate_series(current_date - 6, current_date, interval '1 day') d WHERE c.r <= 20",
            [org_id],
        )
        cursor.execute("ANALYZE knowledge_agentactivity, knowledge_organizationactivity, knowledge_siteactivity, search_chunkaccess")


def finished_jobs(org, agent) -> None:
    from knowledge.models import IngestionJob

    IngestionJob.objects.for_org(org).filter(agent=agent).delete()
    for _ in range(5):
        IngestionJob.objects.for_org(org).create(agent=agent, status="completed", total_documents=3, processed_documents=3)


def time_pages(pages: list[tuple[str, str, dict | None]], n: int) -> harness.Table:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    User = get_user_model()
    user = User.objects.filter(username="bench-console").first() or User.objects.create_superuser("bench-console", "b@example.com", "pw")
    client = Client()
    client.force_login(user)
    table = harness.Table(
        "Console pages: server time (ms), 200k chunks, 1,000 agents, 24 h of minute history per agent",
        ["page", "url", "p50", "p95", "max", "Python CPU p50", "p95", "queries", "bytes"],
    )
    for name, url, post in pages:
        times, cpu, size = [], [], 0
        for i in range(n + 1):
            started, started_cpu = time.perf_counter(), time.process_time()
            with CaptureQueriesContext(connection) as queries:
                response = client.post(url, post) if post is not None else client.get(url)
            elapsed, used = time.perf_counter() - started, time.process_time() - started_cpu
            assert response.status_code == 200, (url, response.status_code)
            size = len(response.content)
            if i:  # the first is a warm-up
                times.append(elapsed)
                cpu.append(used)
        p50, p95 = harness.percentiles(times)
        c50, c95 = harness.percentiles(cpu)
        table.add(
            name, url, harness.ms(p50), harness.ms(p95), harness.ms(max(times)), harness.ms(c50), harness.ms(c95),
            len(queries.captured_queries), f"{size:,}",
        )  # fmt: skip
    table.notes.append(f"{n} requests per page after one warm-up; {harness.machine()}")
    table.notes.append(
        "Python CPU: this process's CPU time per request (the view, templates, the driver's side of each query),"
        " which a busy machine does not inflate as it does the wall time; the database's own time is only in the wall time"
    )
    return table


def screenshot(env: dict, path: str) -> None:
    """The overview as a browser shows it (README's picture), served by the web server."""
    from django.core.management import call_command
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    call_command("collectstatic", "--noinput", verbosity=0)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500", "--hide-scrollbars"):
        options.add_argument(arg)
    with harness.web_server(env, workers=1, threads=2) as server:
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(f"{server.url}/admin/login/?next=/admin/console/")
            driver.find_element(By.ID, "id_username").send_keys("bench-console")
            driver.find_element(By.ID, "id_password").send_keys("pw")
            driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
            time.sleep(2)
            driver.save_screenshot(path)
        finally:
            driver.quit()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", action="store_true", help="keep the data a previous run loaded, if unchanged")
    parser.add_argument("-n", type=int, default=40, help="requests per page (default 40)")
    parser.add_argument("--keep-server", action="store_true", help="leave the embedded PostgreSQL running")
    parser.add_argument("--screenshot", metavar="PNG", help="also save the overview as Chromium shows it (needs selenium)")
    args = parser.parse_args()

    run = harness.Run()
    run.phase("setup and load")
    env = harness.setup("console", dimensions=384, fresh=not args.reuse, ALLOWED_HOSTS="testserver,127.0.0.1")
    specs = harness.agent_specs(HEAD_SIZES + harness.zipf_sizes(1000 - len(HEAD_SIZES), 100_000, minimum=1))
    data = harness.load_synthetic(org_slug="bench", specs=specs, topics=harness.Topics(384))
    harness.build_graphs(data.timings)
    run.phase("history")
    from knowledge.services.stats import usage_reconcile

    usage_reconcile(org=data.org, fix=True)  # the load wrote agents' stats rows only
    fill_history(data.org.pk)

    from knowledge.models import Agent, Document

    largest = Agent.objects.for_org(data.org).get(pk=data.agent_ids[specs[0].slug])
    small = Agent.objects.for_org(data.org).get(pk=data.agent_ids[specs[-1].slug])
    finished_jobs(data.org, largest)
    doc = Document.objects.for_org(data.org).filter(agent=largest).order_by("key").first()
    run.phase("timings")
    a, s, o = largest.pk, small.pk, data.org.pk
    pages = [
        ("admin index", "/admin/", None),
        ("overview", "/admin/console/", None),
        ("organization (1,000 agents)", f"/admin/console/organizations/{o}/", None),
        ("agent, largest (30k chunks)", f"/admin/console/agents/{a}/", None),
        ("agent, smallest", f"/admin/console/agents/{s}/", None),
        ("agent, hot chunks 90 days", f"/admin/console/agents/{a}/?window=90", None),
        ("document with its chunks", f"/admin/console/documents/{doc.pk}/", None),
        ("jobs.json (polled)", "/admin/console/jobs.json", None),
        ("playground search, hybrid", f"/admin/console/agents/{a}/search", {"query": "topic words", "mode": "hybrid", "limit": "10"}),
        ("documents list", "/admin/knowledge/document/", None),
        ("documents list, filtered", f"/admin/knowledge/document/?status=ready&organization__id__exact={o}", None),
        ("documents list, search", "/admin/knowledge/document/?q=a-0001", None),
        ("ingestion jobs list", "/admin/knowledge/ingestionjob/", None),
        ("agents list", "/admin/knowledge/agent/", None),
    ]
    tables = [time_pages(pages, args.n)]
    if args.screenshot:
        run.phase("screenshot")
        screenshot(env, args.screenshot)
    tables.insert(0, run.table())
    harness.print_tables(tables)
    if not args.keep_server:
        harness.stop_database("console")


if __name__ == "__main__":
    main()
