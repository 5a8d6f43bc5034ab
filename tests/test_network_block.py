"""`--block-network` against a listener on 127.0.0.1: what reaches it after the block, from Python, native code
(raw `_socket`, FFmpeg under PyAV/OpenCV/decord), UDP and a subprocess."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = r'''
import json, subprocess, sys
from kernel.offline import block_network

tcp_port, udp_port, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import _socket  # the C module: no Python-level patch can reach it


def raw_tcp(payload):
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    sock.settimeout(3)
    sock.connect(("127.0.0.1", tcp_port))
    sock.sendall(payload)
    sock.close()


def raw_udp(payload):
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    sock.sendto(payload, ("127.0.0.1", udp_port))
    sock.close()


def opencv_open(name):
    import cv2

    if not cv2.VideoCapture(name, cv2.CAP_FFMPEG).isOpened():
        raise OSError("OpenCV could not open it")


raw_tcp(b"before")  # the listener is reachable until the block
raw_udp(b"before")
block = block_network(namespace=mode == "namespace")
import socket
import av, decord
from pathlib import Path
from dfdc_core.video import BACKENDS, read_frames

url = f"http://127.0.0.1:{tcp_port}/"
child = ("import socket, sys; s = socket.socket(); s.settimeout(3); "
         "s.connect(('127.0.0.1', int(sys.argv[1]))); s.sendall(b'after: subprocess')")
attempts = {
    "python socket": lambda: socket.create_connection(("127.0.0.1", tcp_port), timeout=3).sendall(b"after: python"),
    "python UDP sendto": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"after: py udp",
                                                                                         ("127.0.0.1", udp_port)),
    "kernel read_frames": lambda: read_frames(url + "read_frames.mp4", 4),
    **{f"kernel {name} backend": (lambda name=name: BACKENDS[name](Path(url + name + ".mp4"), 4))
       for name in BACKENDS},
}
if mode == "namespace":  # native code and subprocesses: covered only by the namespace
    attempts.update({
        "raw _socket connect": lambda: raw_tcp(b"after: raw _socket"),
        "raw UDP sendto": lambda: raw_udp(b"after: raw udp"),
        "subprocess": lambda: subprocess.run([sys.executable, "-c", child, str(tcp_port)], check=True, timeout=60,
                                             capture_output=True),
        "PyAV http URL": lambda: av.open(url + "pyav.mp4", timeout=3),
        "OpenCV http URL": lambda: opencv_open(url + "opencv.mp4"),
        "decord http URL": lambda: decord.VideoReader(url + "decord.mp4"),
    })
results = {}
for name, attempt in attempts.items():
    try:
        attempt()
        results[name] = "no error"
    except BaseException as error:
        results[name] = f"{type(error).__name__}: {error}"[:160]
print(json.dumps({"namespace": block.namespace, "describe": block.describe(), "results": results}))
'''


@pytest.fixture()
def listener():
    """A TCP server and a UDP socket on 127.0.0.1; `received` lists the first bytes of what reached them."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp.settimeout(0.05)
    udp.settimeout(0.05)
    received: list[tuple[str, bytes]] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = tcp.accept()
                with connection:
                    connection.settimeout(2)
                    received.append(("tcp", connection.recv(64)))
            except (TimeoutError, OSError):
                pass
            try:
                received.append(("udp", udp.recvfrom(64)[0]))
            except (TimeoutError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield tcp.getsockname()[1], udp.getsockname()[1], received
    stop.set()
    thread.join()
    tcp.close()
    udp.close()


def run_probe(ports, mode: str, prefix: tuple[str, ...] = ()) -> dict:
    tcp_port, udp_port, received = ports
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([*prefix, sys.executable, "-c", PROBE, str(tcp_port), str(udp_port), mode], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    time.sleep(0.5)  # let the listener record anything still on its way
    return json.loads(result.stdout.strip().splitlines()[-1])


def reached(received: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """What reached the listener after the block (the probe's two 'before' messages left out)."""
    return [item for item in received if item[1] != b"before"]


def assert_nothing_reached_after_the_block(ports, probe: dict) -> None:
    received = ports[2]
    assert sorted(received)[:2] == [("tcp", b"before"), ("udp", b"before")]  # the listener works
    assert reached(received) == [], (reached(received), probe["results"])
    assert "no error" not in probe["results"].values(), probe["results"]


def test_namespace_block_holds_for_native_code_udp_and_subprocesses(listener):
    probe = run_probe(listener, "namespace")
    if not probe["namespace"]:
        pytest.skip(f"this OS allows no network namespace: {probe['describe']}")
    assert_nothing_reached_after_the_block(listener, probe)
    assert "native code and subprocesses" in probe["describe"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_namespace_block_works_for_an_unprivileged_user(listener):
    """As uid 65534 (no capabilities), `unshare(CLONE_NEWUSER | CLONE_NEWNET)` as `unshare -rn` does."""
    probe = run_probe(listener, "namespace", ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
    if not probe["namespace"]:
        pytest.skip(f"no unprivileged user namespaces here: {probe['describe']}")
    assert_nothing_reached_after_the_block(listener, probe)
    assert "unprivileged" in probe["describe"]


def test_without_a_namespace_python_sockets_and_every_decoder_refuse(listener):
    """The fallback covers Python's socket API and the kernel's decoders, and says what it does not cover."""
    probe = run_probe(listener, "python-only")
    assert not probe["namespace"] and "NOT covered: native code" in probe["describe"]
    assert probe["results"]["python socket"].startswith("NetworkBlocked")
    assert probe["results"]["python UDP sendto"].startswith("NetworkBlocked")
    assert probe["results"]["kernel pyav backend"].startswith("VideoReadError: ")
    assert_nothing_reached_after_the_block(listener, probe)
