"""Who a message may ping: nobody, unless it is for one member, and then only that member.

Member text reaches messages (pet names, prompts, negatives, file names) and may hold
`@everyone`, `<@&role>` or `<@someone else>`. The bot's client-wide default pings nobody
(bot.app); a message that must notify its member allows exactly that member.
"""

from __future__ import annotations

import discord


def only(member_id: str | int) -> discord.AllowedMentions:
    """Ping this member and nobody else, whatever else the text holds."""
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(int(member_id))], replied_user=False)
