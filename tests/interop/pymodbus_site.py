"""A Modbus TCP server built with pymodbus (an implementation leap-edge did not write) for
the interoperability test in tests/device_interop.rs.

Unit 1: a SunSpec map at BASE (models 1, 124, 713, 701, 203, end marker), written here
from the SunSpec JSON model definitions, not from leap-edge's code.
Unit 100: the Victron GX registers leap-edge's victron-gx-ess profile uses (820-822,
842, 843, 2700).

usage: pymodbus_site.py PORT BASE
"""

import asyncio
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartAsyncTcpServer


def u16(v):
    return v & 0xFFFF


def text(s, regs):
    b = s.encode().ljust(regs * 2, b"\0")
    return [(b[i] << 8) | b[i + 1] for i in range(0, regs * 2, 2)]


def model(mid, length, points):
    """points: {offset (from the ID register): [words]}"""
    words = [mid, length] + [0] * length
    for off, vals in points.items():
        words[off : off + len(vals)] = vals
    return words


def sunspec_map():
    m = [0x5375, 0x6E53]
    m += model(1, 66, {2: text("pymodbus-interop", 16), 18: text("storage", 16),
                       42: text("3.16", 8), 50: text("PYM-42", 16)})
    # 124: WChaMax 5000 W (SF 0), StorCtl_Mod 0, ChaState 61.0 % (SF -1),
    # OutWRte/InWRte 100 % (InOutWRte_SF 0).
    m += model(124, 24, {2: [5000], 5: [0], 8: [610], 12: [100], 13: [100],
                         18: [0], 22: [u16(-1)], 25: [0]})
    # 713: WHRtg 10000 Wh (WH_SF 0), SoC 55.5 % (Pct_SF -1).
    m += model(713, 7, {2: [10000], 4: [555], 7: [0], 8: [u16(-1)]})
    # 701: W = 2000 W generation (W_SF 0).
    m += model(701, 153, {10: [2000], 116: [0]})
    # 203: W = -1234 W (exporting; W_SF 0).
    m += model(203, 105, {18: [u16(-1234)], 22: [0]})
    m += [0xFFFF, 0]
    return m


def victron_regs():
    regs = [0] * 2800
    regs[820], regs[821], regs[822] = 1000, 500, u16(-200)
    regs[842] = u16(-3000)  # Victron: negative battery power = discharging
    regs[843] = 64
    regs[2700] = 50
    return regs


async def main():
    port, base = int(sys.argv[1]), int(sys.argv[2])
    # pymodbus adds 1 to the request address before looking it up in a data block, so
    # every block starts one past the Modbus address it serves.
    unit1 = ModbusDeviceContext(hr=ModbusSequentialDataBlock(base + 1, sunspec_map()))
    unit100 = ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, victron_regs()))
    ctx = ModbusServerContext(devices={1: unit1, 100: unit100}, single=False)
    await StartAsyncTcpServer(context=ctx, address=("127.0.0.1", port))


asyncio.run(main())
