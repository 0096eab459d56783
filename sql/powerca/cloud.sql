-- PowerCA cloud (Supabase) schema: what the mobile app reads and writes.
--
-- Mobile table names (reminder, remdetail), `source` ('D' desktop-owned, 'M' mobile-owned, NULL read
-- as 'D'), `created_at` / `updated_at`, a cloud-only serial key on the three tables the desktop keeps
-- without one (jt_id, tc_id, wd_id), jobtasks.client_id looked up from jobshead, no desktop-only columns,
-- and the primary and foreign keys the desktop never enforced.
-- Loaded into an empty database by `tandem seed --schema` and by the tests.

CREATE TABLE orgmaster (
    org_id      integer PRIMARY KEY,
    org_name    varchar(120) NOT NULL,
    org_address text,
    org_city    varchar(60),
    org_phone   varchar(20),
    org_email   varchar(120),
    gstin       varchar(15),
    source      char(1) CHECK (source IN ('D', 'M')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE locmaster (
    loc_id      integer PRIMARY KEY,
    org_id      integer REFERENCES orgmaster (org_id),
    loc_name    varchar(80) NOT NULL,
    loc_address text,
    loc_city    varchar(60),
    source      char(1) CHECK (source IN ('D', 'M')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE conmaster (
    con_id          integer PRIMARY KEY,
    org_id          integer REFERENCES orgmaster (org_id),
    con_name        varchar(120) NOT NULL,
    con_designation varchar(60),
    con_phone       varchar(20),
    con_email       varchar(120),
    source          char(1) CHECK (source IN ('D', 'M')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE climaster (
    client_id       integer PRIMARY KEY,
    org_id          integer REFERENCES orgmaster (org_id),
    loc_id          integer REFERENCES locmaster (loc_id),
    con_id          integer REFERENCES conmaster (con_id),
    client_name     varchar(150) NOT NULL,
    client_type     varchar(20),
    pan             varchar(10),
    gstin           varchar(15),
    email           varchar(120),
    phone           varchar(20),
    address         text,
    city            varchar(60),
    opening_balance numeric(14,2),
    active          boolean DEFAULT true,
    source          char(1) CHECK (source IN ('D', 'M')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cliunimaster (
    cliu_id      integer PRIMARY KEY,
    client_id    integer REFERENCES climaster (client_id),
    unit_name    varchar(120) NOT NULL,
    unit_address text,
    gstin        varchar(15),
    source       char(1) CHECK (source IN ('D', 'M')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE taskmaster (
    task_id       integer PRIMARY KEY,
    task_name     varchar(120) NOT NULL,
    task_desc     text,
    default_hours numeric(6,2),
    billable      boolean,
    source        char(1) CHECK (source IN ('D', 'M')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobmaster (
    job_id      integer PRIMARY KEY,
    job_name    varchar(120) NOT NULL,
    job_desc    text,
    recurrence  varchar(12),
    default_fee numeric(12,2),
    source      char(1) CHECK (source IN ('D', 'M')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mbstaff (
    staff_id    integer PRIMARY KEY,
    org_id      integer REFERENCES orgmaster (org_id),
    staff_name  varchar(120) NOT NULL,
    designation varchar(60),
    email       varchar(120),
    mobile      varchar(20),
    join_date   date,
    active      boolean,
    source      char(1) CHECK (source IN ('D', 'M')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobshead (
    job_id         integer PRIMARY KEY,
    client_id      integer REFERENCES climaster (client_id),
    org_id         integer REFERENCES orgmaster (org_id),
    loc_id         integer REFERENCES locmaster (loc_id),
    jobm_id        integer REFERENCES jobmaster (job_id),
    job_name       varchar(200),
    job_status     varchar(20),
    job_date       date,
    target_date    date,
    completed_date date,
    fee_amount     numeric(12,2),
    remarks        text,
    source         char(1) CHECK (source IN ('D', 'M')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobtasks (
    jt_id        bigserial PRIMARY KEY,
    job_id       integer REFERENCES jobshead (job_id),
    client_id    integer REFERENCES climaster (client_id),
    task_id      integer REFERENCES taskmaster (task_id),
    staff_id     integer REFERENCES mbstaff (staff_id),
    task_name    varchar(200),
    task_status  varchar(20),
    start_date   date,
    end_date     date,
    est_hours    numeric(6,2),
    actual_hours numeric(6,2),
    source       char(1) CHECK (source IN ('D', 'M')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobtasks_job_id_idx ON jobtasks (job_id);

CREATE TABLE taskchecklist (
    tc_id      bigserial PRIMARY KEY,
    job_id     integer REFERENCES jobshead (job_id),
    task_id    integer REFERENCES taskmaster (task_id),
    item_no    smallint,
    item_text  varchar(300),
    done       boolean,
    done_date  date,
    source     char(1) CHECK (source IN ('D', 'M')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX taskchecklist_job_id_idx ON taskchecklist (job_id);

CREATE TABLE workdiary (
    wd_id      bigserial PRIMARY KEY,
    staff_id   integer REFERENCES mbstaff (staff_id),
    wd_date    date,
    job_id     integer REFERENCES jobshead (job_id),
    task_id    integer REFERENCES taskmaster (task_id),
    hours      numeric(5,2),
    narration  text,
    source     char(1) CHECK (source IN ('D', 'M')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workdiary_staff_date_idx ON workdiary (staff_id, wd_date);

CREATE TABLE reminder (
    rem_id      integer PRIMARY KEY,
    staff_id    integer REFERENCES mbstaff (staff_id),
    client_id   integer REFERENCES climaster (client_id),
    rem_date    date,
    rem_time    time,
    rem_subject varchar(200),
    rem_notes   text,
    rem_status  varchar(20),
    source      char(1) CHECK (source IN ('D', 'M')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE remdetail (
    remd_id    integer PRIMARY KEY,
    rem_id     integer REFERENCES reminder (rem_id),
    remd_date  date,
    remd_notes text,
    source     char(1) CHECK (source IN ('D', 'M')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE learequest (
    lea_id      integer PRIMARY KEY,
    staff_id    integer REFERENCES mbstaff (staff_id),
    from_date   date,
    to_date     date,
    leave_type  varchar(20),
    reason      text,
    lea_status  varchar(20),
    approved_by integer REFERENCES mbstaff (staff_id),
    source      char(1) CHECK (source IN ('D', 'M')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
