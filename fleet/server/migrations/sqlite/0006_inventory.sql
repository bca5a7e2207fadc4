-- Version 6 (SQLite). Keep in step with ../postgres/0006_inventory.sql.
--
-- inventory_json: the robot's last rota_protocol::robot::Inventory (board, OS, kernel,
-- addresses, disk, its own tags), JSON; inventory_at: when it last changed.
ALTER TABLE robots ADD COLUMN inventory_json TEXT;
ALTER TABLE robots ADD COLUMN inventory_at BIGINT;

-- Tags operators set on the server (rota robots tag). The robot's own tags live in its
-- inventory; where both name a tag, this table wins.
CREATE TABLE robot_tags (
    robot_id TEXT NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (robot_id, name)
);

-- A dynamic group's query (see fleet/README.md); NULL for a group whose robots are added by
-- hand. A dynamic group has no group_members rows: its robots are the ones the query matches.
ALTER TABLE robot_groups ADD COLUMN member_query TEXT;
