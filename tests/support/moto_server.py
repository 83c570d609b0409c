"""moto's AWS API server on one thread, for the tests.

moto's own `moto_server` handles requests on many threads, and its item updates are not
serialized: concurrent conditional writes, ADD updates and transactions on one item can
interleave, which DynamoDB never allows. Serving one request at a time gives the tests the
atomicity the real service guarantees.

It also makes moto's costs follow what a request touches, as DynamoDB's do, so that a large
batch does not make every later request slower. A query on a table's key reads only its
partition's items in the key range (moto sorts every item of the table, and weighs each one's
size, on each query). And TransactWriteItems costs what
the transaction touches: moto backs up every
table a transaction names with a deep copy before it runs (so a cancelled transaction can be
rolled back), which makes each transaction cost as much as all the data stored so far and a
large batch's run quadratic. Here only the items the transaction names are saved, and a
cancelled transaction puts exactly those back; what the transaction does and answers is moto's
own. (A cancelled transaction's stream records of writes made before the failing check stay in
the stream; the consumers of the stream treat records as hints and are idempotent.)

usage: python moto_server.py HOST PORT
"""

import copy
import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

try:
    # Newer moto releases ship their own request handler; older ones use werkzeug's.
    from moto.moto_server.werkzeug_app import MotoRequestHandler
except ImportError:
    MotoRequestHandler = None


def _patch_transactions() -> None:
    from moto.dynamodb import models as dynamodb_models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType

    class _NoTableBackup:
        """Stands in for the `copy` module inside moto's transaction: no whole-table copies."""

        @staticmethod
        def deepcopy(value):
            return value

    original = DynamoDBBackend.transact_write_items

    def key_of(table, op):
        if "Key" in op:
            return op["Key"]
        item = op.get("Item") or {}
        names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
        if not all(name in item for name in names):
            return None
        return {name: item[name] for name in names}

    def transact_write_items(self, transact_items):
        saved = []
        for entry in transact_items:
            if len(entry) != 1:
                continue
            _, op = next(iter(entry.items()))
            table = self.tables.get(op.get("TableName"))
            key = key_of(table, op) if table is not None else None
            if key is None:
                continue
            hash_value = DynamoType(key[table.hash_key_attr])
            range_value = (
                DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
            )
            before = table.get_item(hash_value, range_value) if hash_value in table.items else None
            saved.append((table, hash_value, range_value, copy.deepcopy(before)))
        dynamodb_models.copy = _NoTableBackup
        try:
            return original(self, transact_items)
        except Exception:
            for table, hash_value, range_value, before in reversed(saved):
                if range_value is None:
                    if before is None:
                        table.items.pop(hash_value, None)
                    else:
                        table.items[hash_value] = before
                elif before is None:
                    table.items.get(hash_value, {}).pop(range_value, None)
                else:
                    table.items[hash_value][range_value] = before
            raise
        finally:
            dynamodb_models.copy = copy

    DynamoDBBackend.transact_write_items = transact_write_items


def _patch_partition_queries() -> None:
    from moto.dynamodb.models.table import Table

    original = Table.query

    def query(self, hash_key, *args, **kwargs):
        index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
        if index_name is not None or hash_key is None or not self.range_key_attr:
            return original(self, hash_key, *args, **kwargs)
        partition = list(self.items.get(hash_key, {}).values())
        range_comparison = args[0] if args else kwargs.get("range_comparison")
        range_values = args[1] if len(args) > 1 else kwargs.get("range_objs")
        if range_comparison:
            # moto weighs every candidate's size before it compares its key: compare first.
            partition = [
                item
                for item in partition
                if item.range_key.compare(range_comparison, range_values)
            ]
        # An instance attribute shadows the method for this one call.
        self.all_items = lambda: partition
        try:
            return original(self, hash_key, *args, **kwargs)
        finally:
            del self.all_items

    Table.query = query


def main() -> None:
    _patch_transactions()
    _patch_partition_queries()
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, app, threaded=False, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
