-- A database made by a pre-Alembic build of Colony: create_all() of the
-- baseline models, with data, and no alembic_version table.
CREATE TABLE households (
    id SERIAL PRIMARY KEY,
    name VARCHAR(200) NOT NULL
);
CREATE TABLE members (
    id SERIAL PRIMARY KEY,
    household_id INTEGER NOT NULL REFERENCES households (id),
    name VARCHAR(200) NOT NULL
);
CREATE TABLE chores (
    id SERIAL PRIMARY KEY,
    household_id INTEGER NOT NULL REFERENCES households (id),
    title VARCHAR(200) NOT NULL,
    done BOOLEAN NOT NULL DEFAULT false
);
INSERT INTO households (name) VALUES ('Maple Street'), ('Harbour Flat'), ('Allotment Cottage');
INSERT INTO members (household_id, name) VALUES (1, 'Ada'), (1, 'Grace'), (2, 'Linus'), (3, 'Barbara');
INSERT INTO chores (household_id, title, done) VALUES
    (1, 'Bins out', true), (1, 'Water the plants', false), (2, 'Descale the kettle', false),
    (3, 'Mow the lawn', true), (3, 'Fix the gate', false);
