"""The board's two languages (English, zh-CN), chosen by Accept-Language or the switch, and
how times and numbers are written in each."""

from __future__ import annotations

import datetime as dt
import zoneinfo

LANGUAGES = ("en", "zh-CN")

_TEXT: dict[str, dict[str, str]] = {
    "title": {"en": "Progress board", "zh-CN": "生产进度看板"},
    "login": {"en": "Log in", "zh-CN": "登录"},
    "logout": {"en": "Log out", "zh-CN": "退出"},
    "user": {"en": "User", "zh-CN": "用户名"},
    "password": {"en": "Password", "zh-CN": "密码"},
    "or_key": {"en": "or a supplier API key", "zh-CN": "或供应商 API 密钥"},
    "api_key": {"en": "API key", "zh-CN": "API 密钥"},
    "login_failed": {"en": "Wrong user name, password or key.",
                     "zh-CN": "用户名、密码或密钥错误。"},
    "login_limited": {"en": "Too many attempts; wait a minute and try again.",
                      "zh-CN": "尝试次数过多，请稍后再试。"},
    "order": {"en": "Order", "zh-CN": "工单"},
    "operation": {"en": "Operation", "zh-CN": "工序"},
    "due": {"en": "Due", "zh-CN": "交期"},
    "eta": {"en": "Estimated completion", "zh-CN": "预计完成"},
    "risk": {"en": "Risk", "zh-CN": "风险"},
    "scrap": {"en": "Scrap", "zh-CN": "报废"},
    "good": {"en": "Good", "zh-CN": "合格"},
    "planned": {"en": "Planned", "zh-CN": "计划"},
    "alerts": {"en": "Open alerts", "zh-CN": "未关闭告警"},
    "no_alerts": {"en": "No open alerts.", "zh-CN": "没有未关闭的告警。"},
    "no_orders": {"en": "No orders match.", "zh-CN": "没有符合条件的工单。"},
    "on_track": {"en": "On track", "zh-CN": "正常"},
    "at_risk": {"en": "At risk", "zh-CN": "有风险"},
    "late": {"en": "Late", "zh-CN": "已逾期"},
    "missed": {"en": "Missed", "zh-CN": "延误完成"},
    "unknown": {"en": "Unknown", "zh-CN": "未知"},
    "Ready": {"en": "Not started", "zh-CN": "未开始"},
    "Running": {"en": "Running", "zh-CN": "进行中"},
    "Paused": {"en": "Paused", "zh-CN": "已暂停"},
    "Completed": {"en": "Completed", "zh-CN": "已完成"},
    "Aborted": {"en": "Aborted", "zh-CN": "已中止"},
    "none": {"en": "Not started", "zh-CN": "未开始"},
    "open": {"en": "Open", "zh-CN": "未完成"},
    "closed": {"en": "Closed", "zh-CN": "已完成"},
    "all": {"en": "All", "zh-CN": "全部"},
    "at_risk_only": {"en": "At risk only", "zh-CN": "仅看有风险"},
    "search": {"en": "Search order", "zh-CN": "搜索工单"},
    "apply": {"en": "Apply", "zh-CN": "筛选"},
    "live": {"en": "Live", "zh-CN": "实时"},
    "disconnected": {"en": "Disconnected, reconnecting…", "zh-CN": "连接已断开，正在重连…"},
    "connecting": {"en": "Connecting…", "zh-CN": "正在连接…"},
    "times_in": {"en": "Times in", "zh-CN": "时间均为"},
    "timeline": {"en": "Timeline", "zh-CN": "时间线"},
    "back": {"en": "Back to the board", "zh-CN": "返回看板"},
    "running_span": {"en": "running", "zh-CN": "运行"},
    "paused_span": {"en": "paused", "zh-CN": "暂停"},
    "now": {"en": "now", "zh-CN": "现在"},
    "suppliers": {"en": "Suppliers", "zh-CN": "供应商"},
    "coordinator": {"en": "Plant coordinator", "zh-CN": "工厂协调员"},
    "edge": {"en": "Edge health", "zh-CN": "边缘网关状态"},
    "gateway": {"en": "Gateway", "zh-CN": "网关"},
    "last_packet": {"en": "Last packet", "zh-CN": "最后数据"},
    "acknowledged": {"en": "Acknowledged up to", "zh-CN": "已确认序号"},
    "gaps": {"en": "Sequence gaps", "zh-CN": "序号缺口"},
    "dead_letters": {"en": "Dead letters", "zh-CN": "死信"},
    "stale": {"en": "Stale", "zh-CN": "失联"},
    "fresh": {"en": "Reporting", "zh-CN": "正常上报"},
    "never": {"en": "Never seen", "zh-CN": "从未上报"},
    "orders_count": {"en": "orders", "zh-CN": "个工单"},
    "view_as": {"en": "Board of", "zh-CN": "查看看板"},
    "language": {"en": "中文", "zh-CN": "English"},
    "skip": {"en": "Skip to the orders", "zh-CN": "跳到工单列表"},
    "reason": {"en": "Reason", "zh-CN": "原因"},
    "events": {"en": "Events", "zh-CN": "事件"},
    "stalled": {"en": "stalled", "zh-CN": "停滞"},
    "delay_risk": {"en": "delay risk", "zh-CN": "延期风险"},
    "due_later": {"en": "Due later", "zh-CN": "交期在后"},
}


def choose(accept_language: str | None, chosen: str | None) -> str:
    """The switch's choice when it names a language, else the first of Accept-Language's
    languages (by q) that the board has, else English."""
    if chosen in LANGUAGES:
        return str(chosen)
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((-q, index, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return "en"


class Texts:
    """One language's strings and formats, for templates."""

    def __init__(self, language: str, zone: str) -> None:
        self.language = language
        self.zone = zoneinfo.ZoneInfo(zone)
        self.zone_name = zone

    def __call__(self, key: str) -> str:
        entry = _TEXT.get(key)
        return entry[self.language] if entry else key

    def number(self, value: int | float | None) -> str:
        """Grouped digits (both languages group by thousands with a comma)."""
        if value is None:
            return "—"
        return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"

    def offset(self) -> str:
        """The plant zone's current UTC offset, `+08:00`."""
        offset = dt.datetime.now(self.zone).utcoffset() or dt.timedelta(0)
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"

    def time(self, epoch: float | None, *, seconds: bool = False) -> str:
        """A time in the plant's zone: `Dec 4 14:03` / `12月4日 14:03`."""
        if epoch is None:
            return "—"
        try:
            local = dt.datetime.fromtimestamp(epoch, self.zone)
        except (OverflowError, OSError, ValueError):
            return "—"
        clock = local.strftime("%H:%M:%S" if seconds else "%H:%M")
        other_year = local.year != dt.datetime.now(self.zone).year
        if self.language == "zh-CN":
            year = f"{local.year}年" if other_year else ""
            return f"{year}{local.month}月{local.day}日 {clock}"
        year = f", {local.year}" if other_year else ""
        return f"{local.strftime('%b')} {local.day}{year} {clock}"

    def iso(self, epoch: float | None) -> str:
        """RFC 3339 with the plant's offset (for <time datetime>)."""
        if epoch is None:
            return ""
        try:
            return dt.datetime.fromtimestamp(epoch, self.zone).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            return ""
