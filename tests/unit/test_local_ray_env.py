"""The environment a local Ray starts with for each HTTP proxy."""

import socket

import pytest

from rayrec.serving.graph.proxy import FREE_PORT_RANGE, free_port, local_ray_env


def _ephemeral_ports() -> range:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as limits:
        low, high = (int(value) for value in limits.read().split())
    return range(low, high + 1)


def test_free_ports_can_be_bound_and_stay_out_of_the_range_starting_processes_draw_from():
    ports = {free_port() for _ in range(20)}
    for port in ports:
        assert port in FREE_PORT_RANGE
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))  # raises if something already listens there
    try:
        ephemeral = _ephemeral_ports()
    except OSError:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range on this platform")
    assert not ports & set(ephemeral)


def test_haproxy_gets_its_own_stats_and_metrics_ports_and_the_users_settings_win(monkeypatch):
    monkeypatch.delenv("RAY_SERVE_HAPROXY_STATS_PORT", raising=False)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_METRICS_PORT", "29999")
    env = local_ray_env("haproxy")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert int(env["RAY_SERVE_HAPROXY_STATS_PORT"]) in FREE_PORT_RANGE
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "29999"
    assert local_ray_env("serve")["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    with pytest.raises(ValueError, match="proxy must be one of"):
        local_ray_env("nginx")
