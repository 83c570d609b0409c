"""moto's AWS API server on one thread, for the tests.

moto's own `moto_server` handles requests on many threads, and its item updates are not
serialized: concurrent conditional writes, ADD updates and transactions on one item can
interleave, which DynamoDB never allows. Serving one request at a time gives the tests the
atomicity the real service guarantees.

usage: python moto_server.py HOST PORT
"""

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

try:
    # Newer moto releases ship their own request handler; older ones use werkzeug's.
    from moto.moto_server.werkzeug_app import MotoRequestHandler
except ImportError:
    MotoRequestHandler = None


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, app, threaded=False, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
