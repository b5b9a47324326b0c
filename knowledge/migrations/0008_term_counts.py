"""Term statistics for BM25 keyword ranking (issue 18): each agent's document frequency
per lexeme (knowledge_termcount) and the length of its chunks in terms
(AgentStats.total_terms), counted from the chunks already stored. Later writes move them
through knowledge/services/stats.py."""

import django.db.models.deletion
import django.db.models.manager
from django.db import migrations, models

from core.rls import TenantRowSecurity, UnscopedRunSQL


BACKFILL = """
INSERT INTO knowledge_termcount (organization_id, agent_id, lexeme, chunks, compacted)
SELECT c.organization_id, c.agent_id, t.lexeme, count(*), true
FROM knowledge_chunk c, unnest(c.search_vector) t
GROUP BY c.organization_id, c.agent_id, t.lexeme;
UPDATE knowledge_agentstats s SET total_terms = x.n
FROM (SELECT c.agent_id, sum(greatest(cardinality(t.positions), 1)) AS n
      FROM knowledge_chunk c, unnest(c.search_vector) t GROUP BY c.agent_id) x
WHERE s.agent_id = x.agent_id;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('knowledge', '0007_row_level_security'),
        ('tenants', '0003_organization_max_in_flight'),
    ]

    operations = [
        migrations.AddField(
            model_name='agentstats',
            name='total_terms',
            field=models.BigIntegerField(db_default=0, default=0),
        ),
        migrations.CreateModel(
            name='TermCount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('lexeme', models.TextField()),
                ('chunks', models.IntegerField()),
                ('compacted', models.BooleanField(default=False)),
                ('agent', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='knowledge.agent')),
                ('organization', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenants.organization')),
            ],
            options={
                'indexes': [models.Index(fields=['organization', 'lexeme', 'agent'], include=('chunks',), name='termcount_org_lexeme_idx'), models.Index(condition=models.Q(('compacted', False)), fields=['organization'], name='termcount_org_fresh_idx')],
            },
            managers=[
                ('unscoped', django.db.models.manager.Manager()),
            ],
        ),
        TenantRowSecurity("knowledge_termcount"),
        UnscopedRunSQL(BACKFILL),
    ]
