"""MCP wire capture, user-space half: payload chunks → MCP messages, tool calls, tool snapshots."""

from whyprobe.mcpwire.message import C2S, S2C, McpMessage, SessionInfo, ToolCall
from whyprobe.mcpwire.pipeline import WirePipeline
from whyprobe.mcpwire.toolscan import Drift, Flag, ToolSnapshot, drift, scan_description

__all__ = [
    "C2S", "S2C", "Drift", "Flag", "McpMessage", "SessionInfo", "ToolCall", "ToolSnapshot", "WirePipeline",
    "drift", "scan_description",
]
