from search.apis import OrganizationSearchApi, SearchInputSerializer


def test_hot_input_serializers_bind_their_own_fields_and_keep_nested_errors():
    # Fields are shallow copies of the declared ones: each instance binds its own, and
    # validating one never changes what another sees.
    first, second = SearchInputSerializer(data={"query": "a"}), SearchInputSerializer(data={"query": "b"})
    assert first.fields["query"] is not second.fields["query"]
    assert first.fields["query"].parent is first and second.fields["query"].parent is second
    assert first.fields["chunk_context"].fields["before"] is not second.fields["chunk_context"].fields["before"]
    bad = SearchInputSerializer(data={"query": "x", "limit": 0, "chunk_context": {"before": 9}, "weights": {"vector": -1}})
    assert not bad.is_valid()
    assert set(bad.errors) == {"limit", "chunk_context", "weights"}
    assert set(bad.errors["chunk_context"]) == {"before"} and set(bad.errors["weights"]) == {"vector"}
    good = SearchInputSerializer(data={"query": "x", "chunk_context": {"after": 2}})
    assert good.is_valid(), good.errors
    assert good.validated_data["chunk_context"] == {"before": 0, "after": 2}
    assert SearchInputSerializer._declared_fields["query"].parent is None  # the declared ones stay unbound


def test_list_children_validate_each_item_for_every_instance():
    bad = OrganizationSearchApi.InputSerializer(data={"query": "x", "agents": ["ok", "not a slug!"]})
    assert not bad.is_valid() and set(bad.errors["agents"]) == {1}
    good = OrganizationSearchApi.InputSerializer(data={"query": "x", "agents": ["ok", "fine"]})
    assert good.is_valid() and good.validated_data["agents"] == ["ok", "fine"]
