"""The Flight server with TLS on 127.0.0.1: a client trusting the certificate gets chunks; a
client that does not trust it, or speaks plaintext, is refused."""
from __future__ import annotations

import shutil
import subprocess
import threading

import pytest
from conftest import write_jsonl_catalog

from mixsql.client import MixClient
from mixsql.errors import OperationalError
from mixsql.server import MixServer

SQL = "SELECT * FROM samples MIX BY kind WITH (a 0.5, b 0.5) SETTINGS (chunk_size = 10)"


@pytest.fixture
def tls_server(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    recs = [{"text": f"{k} {i}", "kind": k} for k in "ab" for i in range(40)]
    cat = write_jsonl_catalog(tmp_path / "cat", recs, properties={"kind": "VARCHAR"})
    srv = MixServer(cat, "127.0.0.1", 0, token="s3cret", tls_cert=cert, tls_key=key)
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    yield srv, cert.read_bytes()
    srv.shutdown()
    thread.join(10)


def test_tls_round_trip_and_refusals(tls_server):
    srv, cert = tls_server
    assert srv.location.startswith("grpc+tls://")
    client = MixClient(srv.location, token="s3cret", tls_root_certs=cert)
    job = client.register_job(SQL)
    assert client.get_chunk(job, 0).num_rows == 10
    untrusted = MixClient(srv.location, token="s3cret", retry_for=1)
    with pytest.raises(OperationalError):
        untrusted.register_job(SQL)
    plaintext = MixClient(srv.location.replace("grpc+tls://", "grpc://"), token="s3cret", retry_for=1)
    with pytest.raises(OperationalError):
        plaintext.register_job(SQL)
