"""Runs SQL queries against tally's Postgres wire server with psycopg (the PostgreSQL
adapter most Python tools use) and prints each result as JSON: a list of rows, each a
list of column values as text (None for NULL).

Usage: python pg_queries.py <host> <port> <password> < queries.json   (a JSON list of SQL)
"""

import json
import sys

import psycopg

host, port, password = sys.argv[1], sys.argv[2], sys.argv[3]
queries = json.load(sys.stdin)
with psycopg.connect(host=host, port=port, user="admin", password=password, dbname="tally",
                     autocommit=True) as conn:
    results = []
    for q in queries:
        with conn.cursor() as cur:
            cur.execute(q)
            rows = cur.fetchall()
        results.append([[None if v is None else str(v) for v in row] for row in rows])
print(json.dumps(results))
