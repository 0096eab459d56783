-- PowerCA desktop schema: the legacy practice-management database tandem replicates from.
--
-- Faithful to the seeds (shared/seeds 000, 002): desktop table names (mbreminder, mbremdetail), no
-- timestamps and no `source` column anywhere, desktop-only columns (jobshead.job_uid, jobshead.sporg_id,
-- jobtasks.jt_uid), no foreign keys, and legacy gaps: jobtasks, taskchecklist and workdiary have no key
-- at all, mbreminder and mbremdetail have an id column but no constraint enforcing it.
-- Loaded into an empty database by `tandem seed --schema` and by the tests.

CREATE TABLE orgmaster (
    org_id      integer PRIMARY KEY,
    org_name    varchar(120) NOT NULL,
    org_address text,
    org_city    varchar(60),
    org_phone   varchar(20),
    org_email   varchar(120),
    gstin       varchar(15)
);

CREATE TABLE locmaster (
    loc_id      integer PRIMARY KEY,
    org_id      integer,
    loc_name    varchar(80) NOT NULL,
    loc_address text,
    loc_city    varchar(60)
);

CREATE TABLE conmaster (
    con_id          integer PRIMARY KEY,
    org_id          integer,
    con_name        varchar(120) NOT NULL,
    con_designation varchar(60),
    con_phone       varchar(20),
    con_email       varchar(120)
);

CREATE TABLE climaster (
    client_id       integer PRIMARY KEY,
    org_id          integer,
    loc_id          integer,
    con_id          integer,
    client_name     varchar(150) NOT NULL,
    client_type     varchar(20),
    pan             varchar(10),
    gstin           varchar(15),
    email           varchar(120),
    phone           varchar(20),
    address         text,
    city            varchar(60),
    opening_balance numeric(14,2),
    active          boolean DEFAULT true
);

CREATE TABLE cliunimaster (
    cliu_id      integer PRIMARY KEY,
    client_id    integer,
    unit_name    varchar(120) NOT NULL,
    unit_address text,
    gstin        varchar(15)
);

CREATE TABLE taskmaster (
    task_id       integer PRIMARY KEY,
    task_name     varchar(120) NOT NULL,
    task_desc     text,
    default_hours numeric(6,2),
    billable      boolean
);

CREATE TABLE jobmaster (
    job_id      integer PRIMARY KEY,
    job_name    varchar(120) NOT NULL,
    job_desc    text,
    recurrence  varchar(12),
    default_fee numeric(12,2)
);

CREATE TABLE mbstaff (
    staff_id    integer PRIMARY KEY,
    org_id      integer,
    staff_name  varchar(120) NOT NULL,
    designation varchar(60),
    email       varchar(120),
    mobile      varchar(20),
    join_date   date,
    active      boolean
);

CREATE TABLE jobshead (
    job_id         integer PRIMARY KEY,
    client_id      integer,
    org_id         integer,
    loc_id         integer,
    jobm_id        integer,
    job_name       varchar(200),
    job_status     varchar(20),
    job_date       date,
    target_date    date,
    completed_date date,
    fee_amount     numeric(12,2),
    remarks        text,
    job_uid        varchar(36),
    sporg_id       integer
);

-- No key: one row per task of a job; the same task may appear twice.
CREATE TABLE jobtasks (
    job_id       integer,
    task_id      integer,
    staff_id     integer,
    task_name    varchar(200),
    task_status  varchar(20),
    start_date   date,
    end_date     date,
    est_hours    numeric(6,2),
    actual_hours numeric(6,2),
    jt_uid       varchar(36)
);
CREATE INDEX jobtasks_job_id_idx ON jobtasks (job_id);

-- No key.
CREATE TABLE taskchecklist (
    job_id    integer,
    task_id   integer,
    item_no   smallint,
    item_text varchar(300),
    done      boolean,
    done_date date
);
CREATE INDEX taskchecklist_job_id_idx ON taskchecklist (job_id);

-- No key: a staff member's time entries for a day.
CREATE TABLE workdiary (
    staff_id  integer,
    wd_date   date,
    job_id    integer,
    task_id   integer,
    hours     numeric(5,2),
    narration text
);
CREATE INDEX workdiary_staff_date_idx ON workdiary (staff_id, wd_date);

-- rem_id is the desktop's id, but the legacy table never got a constraint for it.
CREATE TABLE mbreminder (
    rem_id      integer,
    staff_id    integer,
    client_id   integer,
    rem_date    date,
    rem_time    time,
    rem_subject varchar(200),
    rem_notes   text,
    rem_status  varchar(20)
);

CREATE INDEX mbreminder_rem_id_idx ON mbreminder (rem_id);  -- an index, never made unique

CREATE TABLE mbremdetail (
    remd_id    integer,
    rem_id     integer,
    remd_date  date,
    remd_notes text
);
CREATE INDEX mbremdetail_remd_id_idx ON mbremdetail (remd_id);

CREATE TABLE learequest (
    lea_id      integer PRIMARY KEY,
    staff_id    integer,
    from_date   date,
    to_date     date,
    leave_type  varchar(20),
    reason      text,
    lea_status  varchar(20),
    approved_by integer
);
