from django.urls import path

from search import apis

urlpatterns = [
    path("agents/<slug:slug>/search", apis.AgentSearchApi.as_view(), name="agent-search"),
    path("agents/<slug:slug>/hot-chunks", apis.HotChunksApi.as_view(), name="agent-hot-chunks"),
    path("search", apis.OrganizationSearchApi.as_view(), name="org-search"),
]
