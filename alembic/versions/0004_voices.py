"""voices, and the speakers and turns bound to them

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "voices",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("speaker", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("audio_flac", sa.LargeBinary(), nullable=False),
        sa.Column("codes", sa.LargeBinary(), nullable=True),
        sa.Column("n_q", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "name", name="uq_voice_owner_name"),
    )
    with op.batch_alter_table("voices", schema=None) as batch_op:
        batch_op.create_index("ix_voices_status", ["status"], unique=False)

    op.create_table(
        "speaker_voices",
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("speaker", sa.Integer(), nullable=False),
        sa.Column("voice_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["voice_id"], ["voices.id"]),
        sa.PrimaryKeyConstraint("conversation_id", "speaker"),
    )
    with op.batch_alter_table("speaker_voices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_speaker_voices_voice_id"), ["voice_id"], unique=False)

    op.create_table(
        "turn_voices",
        sa.Column("turn_id", sa.String(length=36), nullable=False),
        sa.Column("voice_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["turn_id"], ["turns.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["voice_id"], ["voices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("turn_id"),
    )
    with op.batch_alter_table("turn_voices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_turn_voices_voice_id"), ["voice_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("turn_voices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_turn_voices_voice_id"))
    op.drop_table("turn_voices")
    with op.batch_alter_table("speaker_voices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_speaker_voices_voice_id"))
    op.drop_table("speaker_voices")
    with op.batch_alter_table("voices", schema=None) as batch_op:
        batch_op.drop_index("ix_voices_status")
    op.drop_table("voices")
