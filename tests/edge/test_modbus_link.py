"""The links' register responses: decoded in one call, exactly as pymodbus' own classes do."""

from __future__ import annotations

import asyncio
import random

import pytest
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from drivers.modbus_link import (
    Backoff,
    SerialBus,
    TcpLink,
    _HoldingRegisters,
    _InputRegisters,
    unpack_registers,
)


@pytest.mark.parametrize("count", [0, 1, 2, 30, 124, 125, 127])
def test_a_register_response_decodes_as_pymodbus_decodes_it(count: int) -> None:
    rng = random.Random(count)
    data = bytes([2 * count]) + bytes(rng.randrange(256) for _ in range(2 * count))
    for ours, theirs in ((_HoldingRegisters(), ReadHoldingRegistersResponse()),
                         (_InputRegisters(), ReadInputRegistersResponse())):
        ours.decode(data)
        theirs.decode(data)
        assert ours.registers == theirs.registers
        assert ours.function_code == theirs.function_code
        assert f"registers=<{count}>" in str(ours)
    assert unpack_registers(data + b"\x00\x01", 3) == theirs.registers  # trailing bytes: ignored


def test_a_register_response_with_a_bad_byte_count_is_refused() -> None:
    with pytest.raises(ModbusIOException, match="byte_count 4"):
        unpack_registers(bytes([4, 0, 1, 0]), 3)  # says 4 bytes, carries 3
    with pytest.raises(ModbusIOException, match="byte_count 3"):
        unpack_registers(bytes([3, 0, 1, 0]), 3)  # half a register


def test_every_link_client_decodes_registers_with_them() -> None:
    async def body() -> None:
        tcp = TcpLink("127.0.0.1", 502, timeout_s=1.0, backoff=Backoff())
        rtu = SerialBus("/dev/null-modbus", parity="E")
        for client in (tcp.new_client(), rtu.new_client()):
            table = client.ctx.framer.decoder.pdu_table
            assert table[3][1] is _HoldingRegisters and table[4][1] is _InputRegisters
            assert table[1][1].__name__ == "ReadCoilsResponse"  # the others stay pymodbus'
            client.close()

    asyncio.run(body())
