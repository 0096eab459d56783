-- PowerCA desktop seed data: fills an EMPTY desktop database (schema from desktop.sql) with a
-- deterministic, plausible data set the size of the one in the seeds (an Indian accounting practice:
-- clients with PAN/GSTIN, recurring GST/ITR/TDS/audit jobs, their tasks, checklists, work diary,
-- reminders and leave requests).
--
-- Scale: read from the session setting tandem.seed_scale (set beforehand with
--   SELECT set_config('tandem.seed_scale', '<scale>', false)
-- NULL or '' means 1.0). Every row count is greatest(1, round(count * scale)), except orgmaster
-- (always 2), locmaster (always 1) and the 3 orphan clients (always 3). At scale 1.0:
--   orgmaster 2, locmaster 1, conmaster 310, climaster 729 (726 + 3 orphans), cliunimaster 148,
--   taskmaster 212, jobmaster 96, mbstaff 38, jobshead 24562, jobtasks 64542, taskchecklist 1208,
--   workdiary 197, mbreminder 121, mbremdetail 164, learequest 57 = 92387 rows.
--
-- Deliberate legacy traits:
--   * the 3 orphan clients (the highest client_ids) carry org_id 3, which is not in orgmaster, and
--     nothing references them, so exactly those 3 rows fail the cloud's foreign keys
--   * every other reference is valid under the cloud's foreign keys (cloud.sql)
--   * about 20 jobtasks rows (scale 1) are exact duplicates (all columns, jt_uid included) of the
--     previous task of the same job (the desktop table has no key)
--   * about 1 in 200 jobshead.remarks is 3 to 12 kB long, 5 of them (scale 1) over 8 kB (TOASTed)
--   * some non-ASCII text (client names with the Hindi prefix and accented words, rupee sign),
--     names with apostrophes, multi-line addresses and remarks, a backslash path
--
-- Deterministic: no random(), no now(). Pseudo-random values come from hashtext() of the row
-- number and a salt, dates are fixed (jobs 2019-04-01 .. 2025-10-31). Plain SQL only (no psql
-- meta-commands), unqualified table names, runs as one batch (simple query protocol).
-- Ids: every table with an id uses 1..n, the orphan clients come right after the valid ones.
-- Note: string literals and comments avoid semicolons on purpose, so the file stays safe to split.

-- JIT compilation of these large expressions costs seconds and gains nothing here. is_local = true:
-- the setting ends with the transaction (the whole batch, when run as one simple-query string).
SELECT set_config('jit', 'off', true);

-- orgmaster: always 2 rows
INSERT INTO orgmaster (org_id, org_name, org_address, org_city, org_phone, org_email, gstin) VALUES
    (1, 'Sharma Agarwal & Associates, Chartered Accountants',
        E'301, Meridian House, Bandra Kurla Complex\nBandra East', 'Mumbai', '+91 22 2659 4410',
        'office@sharmaagarwal.example.in', '27AAKFS4821M1Z7'),
    (2, 'SAA Tax Advisory LLP', '5th Floor, Pride Icon, Kharadi', 'Pune', '+91 20 6712 0300',
        'pune@saataxadvisory.example.in', '27ACUFS9312K1Z2');

-- locmaster: always 1 row
INSERT INTO locmaster (loc_id, org_id, loc_name, loc_address, loc_city) VALUES
    (1, 1, 'Head Office - Mumbai', '301, Meridian House, Bandra Kurla Complex, Bandra East - 400051',
        'Mumbai');

-- conmaster: contact persons of the clients
INSERT INTO conmaster (con_id, org_id, con_name, con_designation, con_phone, con_email)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['Rajesh','Suresh','Priya','Anita','Vikram','Sunita','Amit','Neha','Rahul','Pooja',
                 'Sanjay','Kavita','Arjun','Meena','Deepak','Lakshmi','Ravi','Geeta','Manoj','Shalini',
                 'Karthik','Divya','Anil','Rekha','Venkatesh','Farhan','Imran','Zoya','Harpreet',
                 'Gurpreet','Joseph','Mary','Nikhil','Swati','Prakash','Asha','Sameer','Nandini',
                 'Rohit','Bhavna'] AS fn,
           ARRAY['Sharma','Agarwal','Patel','Shah','Mehta','Iyer','Reddy','Nair','Gupta','Joshi',
                 'Kulkarni','Deshpande','Rao','Singh','Khan','Das','Banerjee','Chatterjee','Menon',
                 'Pillai','Jain','Bhat','Shetty','Kapoor','Malhotra','Verma','Mishra','Chopra',
                 'Fernandes','D''Souza','Sheikh','Naidu','Gowda','Saxena','Trivedi','Pandey','Bose',
                 'Ghosh','Kamath','Hegde'] AS ln,
           ARRAY['Director','Partner','Proprietor','Accountant','CFO','Finance Manager',
                 'Company Secretary','Managing Director','Trustee','Karta','Office Manager',
                 'Accounts Executive'] AS des
), b AS (
    SELECT g,
           (hashtext(g || ':con.a') & 2147483647) AS h1,
           (hashtext(g || ':con.b') & 2147483647) AS h2
    FROM p, generate_series(1, p.n_con) g
), n AS (
    SELECT b.*, w.fn[1 + h1 % cardinality(w.fn)] AS f, w.ln[1 + (h1 / 64) % cardinality(w.ln)] AS l,
           w.des[1 + (h2 / 7) % cardinality(w.des)] AS d
    FROM b, w
)
SELECT g,
       CASE WHEN (h1 / 4096) % 5 = 0 THEN 2 ELSE 1 END,
       f || ' ' || l,
       CASE WHEN (h2 / 100) % 20 = 0 THEN NULL ELSE d END,
       CASE WHEN h2 % 12 = 0 THEN NULL
            ELSE '+91 ' || (7 + h2 % 3) || lpad(((h2 / 3) % 1000000000)::text, 9, '0') END,
       CASE WHEN (h1 / 100000) % 10 = 0 THEN NULL
            ELSE lower(regexp_replace(f || '.' || l, '[^A-Za-z.]', '', 'g'))
                 || CASE WHEN (h2 / 1000) % 4 = 0 THEN (g % 100)::text ELSE '' END
                 || CASE WHEN (h2 / 50) % 3 = 0 THEN '@example.com' ELSE '@example.in' END END
FROM n
ORDER BY g;

-- climaster: the valid clients (ids 1..n)
INSERT INTO climaster (client_id, org_id, loc_id, con_id, client_name, client_type, pan, gstin,
                       email, phone, address, city, opening_balance, active)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['Rajesh','Suresh','Priya','Anita','Vikram','Sunita','Amit','Neha','Rahul','Pooja',
                 'Sanjay','Kavita','Arjun','Meena','Deepak','Lakshmi','Ravi','Geeta','Manoj','Shalini',
                 'Karthik','Divya','Anil','Rekha','Venkatesh','Farhan','Imran','Zoya','Harpreet',
                 'Gurpreet','Joseph','Mary','Nikhil','Swati','Prakash','Asha','Sameer','Nandini',
                 'Rohit','Bhavna'] AS fn,
           ARRAY['Sharma','Agarwal','Patel','Shah','Mehta','Iyer','Reddy','Nair','Gupta','Joshi',
                 'Kulkarni','Deshpande','Rao','Singh','Khan','Das','Banerjee','Chatterjee','Menon',
                 'Pillai','Jain','Bhat','Shetty','Kapoor','Malhotra','Verma','Mishra','Chopra',
                 'Fernandes','D''Souza','Sheikh','Naidu','Gowda','Saxena','Trivedi','Pandey','Bose',
                 'Ghosh','Kamath','Hegde'] AS ln,
           ARRAY['Balaji','Ganesh','Sai','Lakshmi','Krishna','Om','Siddhi','Vinayak','Mahalaxmi',
                 'Sunrise','Apex','Pinnacle','Galaxy','Royal','Star','Unique','Global','National',
                 'Metro','Prime','Elite','Crystal','Silverline','Greenfield','Bluestone','Orient',
                 'Pioneer','Supreme','Vardhman','Shubh','Navrang','Kaveri','Sahyadri','Café',
                 'Élan','Jai Hind','Amrit','Tirupati','Swastik','Ashirwad'] AS bw,
           ARRAY['Traders','Enterprises','Industries','Textiles','Pharma','Steels','Agencies',
                 'Exports','Infotech','Constructions','Foods','Motors','Chemicals','Logistics',
                 'Plastics','Electricals','Jewellers','Hospitality','Polymers','Auto Parts',
                 'Builders','Garments','Distributors','Engineering','Healthcare'] AS bk,
           ARRAY['Mumbai','Mumbai','Mumbai','Mumbai','Pune','Pune','Thane','Navi Mumbai','Nashik',
                 'Nagpur','Ahmedabad','Surat','Bengaluru','Chennai','Hyderabad','New Delhi','Kolkata',
                 'Jaipur','Indore','Kochi','Panaji'] AS city,
           ARRAY['27','27','27','27','27','27','27','27','27','27','24','24','29','33','36','07','19',
                 '08','23','32','30'] AS st,
           ARRAY['400','400','400','400','411','411','400','400','422','440','380','395','560','600',
                 '500','110','700','302','452','682','403'] AS pin,
           ARRAY['Shanti Niketan','Sai Darshan','Gokul Apartments','Trade Centre','Laxmi Industrial Estate',
                 'Om Heights','Kamla Chambers','Crystal Plaza','Ashoka Complex','Neelkanth Tower',
                 'Ganga Bhavan','Sunshine Arcade','Raheja Point','Vishal Shopping Centre'] AS bldg,
           ARRAY['MG Road','Station Road','LBS Marg','SV Road','Link Road','Nehru Nagar','Gandhi Chowk',
                 'Tilak Road','Ring Road','Market Yard','MIDC Area','Main Bazaar','Linking Road',
                 'Old Agra Road'] AS road
), b AS (
    SELECT g,
           (hashtext(g || ':cl.t') & 2147483647) % 100 AS tp,
           (hashtext(g || ':cl.n1') & 2147483647) AS h1,
           (hashtext(g || ':cl.n2') & 2147483647) AS h2,
           (hashtext(g || ':cl.pan') & 2147483647) AS h3,
           (hashtext(g || ':cl.pan2') & 2147483647) AS h4,
           (hashtext(g || ':cl.addr') & 2147483647) AS h5,
           (hashtext(g || ':cl.misc') & 2147483647) AS h6,
           p.n_con
    FROM p, generate_series(1, p.n_cli) g
), n AS (
    SELECT b.*,
           CASE WHEN tp < 34 THEN 'Individual' WHEN tp < 48 THEN 'Proprietorship'
                WHEN tp < 60 THEN 'Partnership' WHEN tp < 80 THEN 'Private Limited'
                WHEN tp < 87 THEN 'LLP' WHEN tp < 93 THEN 'HUF' WHEN tp < 97 THEN 'Trust'
                ELSE 'Public Limited' END AS ctype,
           w.fn[1 + h1 % cardinality(w.fn)] AS f,
           w.ln[1 + (h1 / 64) % cardinality(w.ln)] AS l,
           w.ln[1 + (h2 / 64) % cardinality(w.ln)] AS l2,
           w.bw[1 + h2 % cardinality(w.bw)] AS bw1,
           w.bk[1 + (h2 / 4096) % cardinality(w.bk)] AS bk1,
           w.city[1 + h5 % cardinality(w.city)] AS cty,
           w.st[1 + h5 % cardinality(w.city)] AS stc,
           w.pin[1 + h5 % cardinality(w.city)] AS pin3,
           w.bldg[1 + (h5 / 32) % cardinality(w.bldg)] AS bld,
           w.road[1 + (h5 / 1024) % cardinality(w.road)] AS rd
    FROM b, w
), m AS (
    SELECT n.*,
           CASE ctype
               WHEN 'Individual' THEN f || CASE WHEN h6 % 10 < 3 THEN ' ' || chr(65 + (h6 / 10) % 26) || '.'
                                                ELSE '' END || ' ' || l
               WHEN 'Proprietorship' THEN bw1 || ' ' || bk1
               WHEN 'Partnership' THEN CASE WHEN h6 % 2 = 0 THEN bw1 || ' ' || bk1 || ' & Co.'
                                            ELSE l || ' & ' || l2 || ' Associates' END
               WHEN 'Private Limited' THEN bw1 || ' ' || bk1 || ' Private Limited'
               WHEN 'LLP' THEN bw1 || ' ' || bk1 || ' LLP'
               WHEN 'HUF' THEN f || ' ' || l || ' HUF'
               WHEN 'Trust' THEN bw1 || ' ' || (ARRAY['Charitable Trust','Education Trust','Foundation',
                                                       'Seva Trust'])[1 + h6 % 4]
               ELSE bw1 || ' ' || bk1 || ' Limited' END AS base_name,
           CASE ctype WHEN 'Individual' THEN 'P' WHEN 'Proprietorship' THEN 'P' WHEN 'HUF' THEN 'H'
                      WHEN 'Trust' THEN 'T' WHEN 'Private Limited' THEN 'C' WHEN 'Public Limited' THEN 'C'
                      ELSE 'F' END AS pan4
    FROM n
), q AS (
    SELECT m.*,
           CASE WHEN g % 61 = 7 THEN 'श्री ' || base_name ELSE base_name END AS cname,
           CASE WHEN h4 % 33 = 0 THEN NULL
                ELSE chr(65 + h3 % 26) || chr(65 + (h3 / 26) % 26) || chr(65 + (h3 / 676) % 26) || pan4
                     || coalesce(substring(upper(translate(
                                CASE WHEN ctype IN ('Individual', 'HUF', 'Proprietorship') THEN l
                                     ELSE base_name END, 'éÉèêôà', 'eEeeoa')) FROM '[A-Z]'), 'X')
                     || lpad((h4 % 10000)::text, 4, '0') || chr(65 + (h4 / 10000) % 26) END AS pan
    FROM m
)
SELECT g,
       CASE WHEN (h1 / 8192) % 5 = 0 THEN 2 ELSE 1 END,
       1,
       1 + (h2 / 13) % n_con,
       cname,
       ctype,
       pan,
       CASE WHEN pan IS NULL THEN NULL
            WHEN ctype IN ('Individual', 'HUF') AND h6 % 10 <> 0 THEN NULL
            WHEN (h6 / 7) % 9 = 0 THEN NULL
            ELSE stc || pan || '1Z' || substr('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ', 1 + (h5 / 100) % 36, 1)
       END,
       CASE WHEN (h6 / 1000) % 10 = 0 THEN NULL
            WHEN ctype IN ('Individual', 'HUF')
                THEN lower(regexp_replace(f || '.' || l, '[^A-Za-z.]', '', 'g'))
                     || CASE WHEN (h6 / 100) % 3 = 0 THEN (g % 100)::text ELSE '' END
                     || CASE WHEN (h6 / 10000) % 3 = 0 THEN '@example.com' ELSE '@example.in' END
            ELSE left(lower(regexp_replace(translate(base_name, 'éÉèêôà', 'eEeeoa'), '[^A-Za-z0-9]', '',
                                           'g')), 60)
                 || CASE WHEN (h6 / 10000) % 3 = 0 THEN '@example.com' ELSE '@example.in' END END,
       CASE WHEN h4 % 13 = 5 THEN NULL
            ELSE '+91 ' || (7 + h4 % 3) || lpad(((h4 / 3) % 1000000000)::text, 9, '0') END,
       CASE WHEN (h5 / 64) % 25 = 0 THEN NULL
            ELSE (1 + h5 % 450) || ', ' || bld || CASE WHEN (h5 / 16) % 5 = 0 THEN E'\n' ELSE ', ' END
                 || rd || ', ' || cty || ' - ' || pin3 || lpad(((h6 / 3) % 100)::text, 3, '0') END,
       cty,
       CASE WHEN h3 % 4 = 0 THEN 0.00 ELSE round(((h3 % 2000000)::numeric - 400000) / 7, 2) END,
       (h6 / 7) % 12 <> 0
FROM q
ORDER BY g;

-- climaster: the 3 orphan clients (always 3, org_id 3 does not exist, nothing references them)
INSERT INTO climaster (client_id, org_id, loc_id, con_id, client_name, client_type, pan, gstin,
                       email, phone, address, city, opening_balance, active)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(726 * s))::int AS n_cli
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
)
SELECT p.n_cli + v.k, 3, 1, 1, v.cname, v.ctype, v.pan, v.gstin, v.email, v.phone, v.address, v.city,
       v.bal, false
FROM p, (VALUES
    (1, 'Kothari Metal Works', 'Proprietorship', 'AKQPK4410D', NULL, 'kotharimetalworks@example.in',
        '+91 9820014410', '12, Lohar Chawl, Kalbadevi Road, Mumbai - 400002', 'Mumbai', 18250.00),
    (2, 'Deshmukh Agro Foods Private Limited', 'Private Limited', 'AADCD7731Q', '27AADCD7731Q1ZK',
        NULL, '+91 9422077310', 'Plot 7, MIDC Area, Baramati - 413133', 'Baramati', 0.00),
    (3, 'Sneha R. Kulkarni', 'Individual', 'BNZPK2209L', NULL, 'sneha.kulkarni@example.com',
        NULL, NULL, 'Pune', -1500.00)
) v(k, cname, ctype, pan, gstin, email, phone, address, city, bal)
ORDER BY 1;

-- cliunimaster: units, branches and godowns of (mostly non-individual) valid clients
INSERT INTO cliunimaster (cliu_id, client_id, unit_name, unit_address, gstin)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['Factory','Godown','Branch Office','Warehouse','Showroom','Registered Office',
                 'Works','Depot'] AS kind,
           ARRAY['Bhiwandi','Taloja MIDC','Vasai','Chakan','Hinjewadi','Sanand','Hosur','Peenya',
                 'Ambattur','Manesar','Okhla Phase II','Howrah','Sitapura','Pithampur','Silvassa'] AS area,
           ARRAY['Thane','Navi Mumbai','Palghar','Pune','Pune','Ahmedabad','Krishnagiri','Bengaluru',
                 'Chennai','Gurugram','New Delhi','Howrah','Jaipur','Dhar','Silvassa'] AS ucity,
           ARRAY['27','27','27','27','27','24','33','29','33','06','07','19','08','23','26'] AS ust,
           ARRAY['421302','410208','401208','410501','411057','382110','635126','560058','600053',
                 '122050','110020','711101','302022','454775','396230'] AS upin
), c AS (
    SELECT client_id, gstin,
           row_number() OVER (ORDER BY client_type IN ('Individual', 'HUF'), client_id) AS rn
    FROM climaster
    WHERE org_id IN (SELECT org_id FROM orgmaster)
), nb AS (
    SELECT greatest(1, count(*) FILTER (WHERE client_type NOT IN ('Individual', 'HUF'))) AS nb
    FROM climaster
    WHERE org_id IN (SELECT org_id FROM orgmaster)
), b AS (
    SELECT g, (hashtext(g || ':cu') & 2147483647) AS h, (hashtext(g || ':cu.b') & 2147483647) AS h2
    FROM p, generate_series(1, p.n_cliu) g
), n AS (
    SELECT b.*, 1 + (h2 / 8) % cardinality(w.area) AS ai,
           w.kind[1 + h % cardinality(w.kind)] AS knd
    FROM b, w
)
SELECT n.g,
       c.client_id,
       n.knd || ' - ' || w.area[n.ai] || ', ' || w.ucity[n.ai],
       CASE WHEN (n.h / 64) % 15 = 0 THEN NULL
            ELSE 'Gala No. ' || (1 + (n.h / 8) % 120) || ', ' || w.area[n.ai] || ', '
                 || w.ucity[n.ai] || ' - ' || w.upin[n.ai] END,
       CASE WHEN c.gstin IS NULL OR n.h2 % 6 = 0 THEN NULL
            ELSE w.ust[n.ai] || substr(c.gstin, 3, 10) || (2 + (n.h2 / 6) % 3) || 'Z'
                 || substr('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ', 1 + (n.h2 / 100) % 36, 1) END
FROM n
CROSS JOIN w
CROSS JOIN nb
JOIN c ON c.rn = 1 + n.h % nb.nb
ORDER BY n.g;

-- taskmaster: the task catalogue
INSERT INTO taskmaster (task_id, task_name, task_desc, default_hours, billable)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['Collect','Verify','Prepare','Review','File','Reconcile','Compute','Draft',
                 'Scrutinise','Upload','Finalise','Follow up on'] AS act,
           ARRAY['Sales Register','Purchase Register','GSTR-1','GSTR-3B','GSTR-2B Match','TDS Challans',
                 'Form 26AS','AIS/TIS','Bank Statements','Ledger Balances','Fixed Asset Register',
                 'Stock Statement','Payroll Sheet','PF/ESI Returns','Advance Tax Working',
                 'Balance Sheet','Profit & Loss Account','Form 3CD','Form 16','Board Resolutions',
                 'MGT-7','AOC-4','DIR-3 KYC'] AS obj
)
SELECT g,
       w.act[1 + (g - 1) % cardinality(w.act)] || ' '
           || w.obj[1 + ((g - 1) / cardinality(w.act)) % cardinality(w.obj)],
       CASE WHEN h % 4 = 0 THEN NULL
            ELSE 'Standard step: ' || lower(w.act[1 + (g - 1) % cardinality(w.act)]) || ' '
                 || w.obj[1 + ((g - 1) / cardinality(w.act)) % cardinality(w.obj)]
                 || ' as per the firm''s checklist' END,
       (1 + (h / 4) % 32) * 0.25,
       (h / 256) % 100 < 85
FROM p CROSS JOIN w, generate_series(1, p.n_task) g,
     LATERAL (SELECT (hashtext(g || ':tm') & 2147483647) AS h) x
ORDER BY g;

-- jobmaster: the job types (32 kinds x 3 client categories at scale 1)
INSERT INTO jobmaster (job_id, job_name, job_desc, recurrence, default_fee)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['GST Return','GST Return (QRMP)','GST Annual Return','Income Tax Return','TDS Return',
                 'Advance Tax Computation','Statutory Audit','Tax Audit','Internal Audit','Stock Audit',
                 'Bank Concurrent Audit','ROC Annual Filing','LLP Annual Filing','Bookkeeping',
                 'Payroll Processing','PF & ESI Compliance','Professional Tax Return',
                 'Company Incorporation','GST Registration','Income Tax Assessment','GST Notice Reply',
                 'Net Worth Certificate','Project Report','Trust Audit','FEMA / FLA Return',
                 'Transfer Pricing Study','MSME Registration','DSC Renewal',
                 'Form 15CA/15CB Certification','CMA Data Preparation','Management Accounts',
                 'Director KYC'] AS nm,
           ARRAY['Monthly','Quarterly','Annual','Annual','Quarterly','Quarterly','Annual','Annual',
                 'Quarterly','Half-Yearly','Monthly','Annual','Annual','Monthly','Monthly','Monthly',
                 'Annual','One-time','One-time','One-time','One-time','One-time','One-time','Annual',
                 'Annual','Annual','One-time','One-time','One-time','Annual','Quarterly','Annual'] AS rec,
           ARRAY[3000,4500,15000,5000,3500,2500,75000,40000,30000,25000,20000,12000,8000,6000,5000,3000,
                 1500,18000,3000,25000,10000,3500,20000,15000,10000,60000,2000,1500,4000,15000,12000,
                 1000]::numeric[] AS fee,
           ARRAY[' - Individual',' - Firm',' - Company'] AS var,
           ARRAY[0.6, 1.0, 1.8]::numeric[] AS mult
)
SELECT g,
       w.nm[1 + (g - 1) % 32] || w.var[1 + ((g - 1) / 32) % 3],
       CASE WHEN g % 5 = 3 THEN NULL
            ELSE w.rec[1 + (g - 1) % 32] || ' engagement: ' || w.nm[1 + (g - 1) % 32] || ' for '
                 || lower(substr(w.var[1 + ((g - 1) / 32) % 3], 4)) || ' clients' END,
       w.rec[1 + (g - 1) % 32],
       round(w.fee[1 + (g - 1) % 32] * w.mult[1 + ((g - 1) / 32) % 3], -2)
FROM p CROSS JOIN w, generate_series(1, p.n_jobm) g
ORDER BY g;

-- mbstaff: partners, managers and article assistants
INSERT INTO mbstaff (staff_id, org_id, staff_name, designation, email, mobile, join_date, active)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['Rajesh','Suresh','Priya','Anita','Vikram','Sunita','Amit','Neha','Rahul','Pooja',
                 'Sanjay','Kavita','Arjun','Meena','Deepak','Lakshmi','Ravi','Geeta','Manoj','Shalini',
                 'Karthik','Divya','Anil','Rekha','Venkatesh','Farhan','Imran','Zoya','Harpreet',
                 'Gurpreet','Joseph','Mary','Nikhil','Swati','Prakash','Asha','Sameer','Nandini',
                 'Rohit','Bhavna'] AS fn,
           ARRAY['Sharma','Agarwal','Patel','Shah','Mehta','Iyer','Reddy','Nair','Gupta','Joshi',
                 'Kulkarni','Deshpande','Rao','Singh','Khan','Das','Banerjee','Chatterjee','Menon',
                 'Pillai','Jain','Bhat','Shetty','Kapoor','Malhotra','Verma','Mishra','Chopra',
                 'Fernandes','D''Souza','Sheikh','Naidu','Gowda','Saxena','Trivedi','Pandey','Bose',
                 'Ghosh','Kamath','Hegde'] AS ln,
           ARRAY['Audit Executive','Article Assistant','Article Assistant','Accountant','Tax Consultant',
                 'Semi-Qualified Assistant','Office Assistant','Article Assistant','Audit Executive',
                 'GST Executive'] AS des
), b AS (
    SELECT g, (hashtext(g || ':st') & 2147483647) AS h, (hashtext(g || ':st.b') & 2147483647) AS h2
    FROM p, generate_series(1, p.n_staff) g
), n AS (
    SELECT b.*, w.fn[1 + (h + 7) % cardinality(w.fn)] AS f, w.ln[1 + (h / 64) % cardinality(w.ln)] AS l,
           w.des[1 + h2 % cardinality(w.des)] AS d
    FROM b, w
)
SELECT g,
       CASE WHEN g % 6 = 0 THEN 2 ELSE 1 END,
       f || ' ' || l,
       CASE WHEN g <= 2 THEN 'Partner' WHEN g = 3 THEN 'Senior Manager' WHEN g <= 6 THEN 'Manager'
            ELSE d END,
       CASE WHEN (h2 / 100) % 10 = 0 THEN NULL
            ELSE lower(regexp_replace(f || '.' || l, '[^A-Za-z.]', '', 'g')) || g || '@example.com' END,
       '+91 ' || (7 + h2 % 3) || lpad(((h2 / 3) % 1000000000)::text, 9, '0'),
       CASE WHEN g <= 2 THEN date '2006-04-01' + g * 400
            ELSE date '2010-06-01' + ((h / 1000) % 5200)::int END,
       g <= 6 OR (h2 / 1000) % 10 <> 0
FROM n
ORDER BY g;

-- jobshead: one row per job, ids in date order (about 10 jobs a day from 2019-04-01 to 2025-10-31)
INSERT INTO jobshead (job_id, client_id, org_id, loc_id, jobm_id, job_name, job_status, job_date,
                      target_date, completed_date, fee_amount, remarks, job_uid, sporg_id)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['Client to share documents','Awaiting payment','Documents received',
                 'Priority client','Fee revised as per email','Filed before due date',
                 'Follow up with accountant','Partner review pending',
                 'Delay due to notice from department','Revised return required',
                 E'Scanned copies saved in C:\\PowerCA\\Scans','Client travelling, resume next week',
                 'Refund expected','श्री गणेश - new engagement',
                 'Reconciliation difference ₹ 1,250 pending',
                 E'Call before visiting.\nOffice closed on Saturdays'] AS rm,
           ARRAY['Client','Accountant','Partner','Article assistant','Manager','Client''s CFO','Bank',
                 'Department','Auditor','Consultant'] AS who,
           ARRAY['shared','requested','confirmed','revised','questioned','approved','sent back',
                 'uploaded','rechecked','forwarded'] AS vb,
           ARRAY['the ledger extracts','bank statements','the GSTR-2B reconciliation','TDS workings',
                 'fixed asset schedule','stock statement','draft financial statements',
                 'the notice reply','investment proofs','sales register','the purchase bills',
                 'loan confirmations'] AS obj,
           ARRAY['difference still open','matched after adjustment','pending partner review',
                 'to be discussed in next meeting','client agreed to pass correcting entries',
                 'rectification filed','no further action required','awaiting confirmation from bank',
                 'escalated to the partner','marked for follow up'] AS oc
), b AS MATERIALIZED (
    SELECT g AS job_id,
           1 + (hashtext(g || ':jh.c') & 2147483647) % p.n_cli AS client_id,
           1 + (hashtext(g || ':jh.m') & 2147483647) % p.n_jobm AS jobm_id,
           least(date '2025-10-31', greatest(date '2019-04-01',
                 date '2019-04-01' + ((g - 1)::bigint * 2406 / p.n_job)::int
                     + (hashtext(g || ':jh.d') & 2147483647) % 9 - 4)) AS job_date,
           (hashtext(g || ':jh.s') & 2147483647) AS hs,
           (hashtext(g || ':jh.r') & 2147483647) AS hr,
           md5('jh:' || g) AS m
    FROM p, generate_series(1, p.n_job) g
), s AS (
    SELECT b.*, date '2025-10-31' - job_date AS age,
           date_part('year', job_date)::int - CASE WHEN date_part('month', job_date) < 4 THEN 1 ELSE 0 END AS fy,
           (date_part('month', job_date)::int + 8) % 12 / 3 + 1 AS q
    FROM b
), t AS MATERIALIZED (
    SELECT s.*,
           'FY' || fy || '-' || lpad(((fy + 1) % 100)::text, 2, '0') AS fys,
           'FY' || (fy - 1) || '-' || lpad((fy % 100)::text, 2, '0') AS fys_prev,
           CASE WHEN age > 365 THEN
                    CASE WHEN hs % 100 < 58 THEN 'Billed' WHEN hs % 100 < 95 THEN 'Completed'
                         WHEN hs % 100 < 98 THEN 'On Hold' ELSE 'In Progress' END
                WHEN age > 120 THEN
                    CASE WHEN hs % 100 < 35 THEN 'Billed' WHEN hs % 100 < 75 THEN 'Completed'
                         WHEN hs % 100 < 85 THEN 'In Progress' WHEN hs % 100 < 92 THEN 'On Hold'
                         ELSE 'Open' END
                ELSE
                    CASE WHEN hs % 100 < 5 THEN 'Billed' WHEN hs % 100 < 20 THEN 'Completed'
                         WHEN hs % 100 < 60 THEN 'In Progress' WHEN hs % 100 < 67 THEN 'On Hold'
                         ELSE 'Open' END
           END AS status,
           CASE WHEN job_id % 200 <> 17 THEN NULL
                WHEN ((job_id - 17) / 200) % 25 = 3 THEN 8500 + hr % 3500
                ELSE 3000 + hr % 4900 END AS long_len
    FROM s
)
SELECT t.job_id,
       t.client_id,
       c.org_id,
       1,
       t.jobm_id,
       split_part(jm.job_name, ' - ', 1) || ' '
           || CASE jm.recurrence
                  WHEN 'Monthly' THEN to_char(t.job_date, 'Mon YYYY')
                  WHEN 'Quarterly' THEN t.fys || ' Q' || t.q
                  WHEN 'Half-Yearly' THEN t.fys || ' H' || CASE WHEN t.q <= 2 THEN 1 ELSE 2 END
                  WHEN 'Annual' THEN t.fys_prev
                  ELSE '- ' || left(c.client_name, 80) END,
       t.status,
       t.job_date,
       t.job_date + 15 + ((t.hs / 100) % 46)::int,
       CASE WHEN t.status IN ('Completed', 'Billed')
            THEN least(date '2025-10-31', t.job_date + 3 + ((t.hs / 5000) % 75)::int) END,
       CASE WHEN (t.hr / 11) % 50 = 0 THEN NULL
            ELSE round(jm.default_fee * (80 + (t.hr / 3) % 41) / 100 / 50) * 50 END,
       CASE WHEN t.long_len IS NOT NULL THEN
                (SELECT left(string_agg(
                            format('%s: %s %s %s, %s (amount Rs %s, ref %s/%s).',
                                   to_char(t.job_date + (k % 90), 'DD-Mon-YYYY'),
                                   w.who[1 + hk % cardinality(w.who)],
                                   w.vb[1 + (hk / 16) % cardinality(w.vb)],
                                   w.obj[1 + (hk / 256) % cardinality(w.obj)],
                                   w.oc[1 + (hk / 4096) % cardinality(w.oc)],
                                   to_char((hk % 250000000) / 100.0, 'FM9999990.00'),
                                   t.job_id, k),
                            CASE WHEN k % 6 = 1 THEN E'\n\n' ELSE ' ' END ORDER BY k), t.long_len)
                 FROM generate_series(1, t.long_len / 40 + 2) k,
                      LATERAL (SELECT (hashtext(t.job_id || ':' || k || ':jh.l') & 2147483647) AS hk) z)
            WHEN (t.hr / 7) % 10 < 6 THEN NULL
            ELSE w.rm[1 + (t.hr / 70) % cardinality(w.rm)] END,
       upper(substr(t.m, 1, 8) || '-' || substr(t.m, 9, 4) || '-4' || substr(t.m, 14, 3) || '-'
             || substr('89ab', 1 + ascii(substr(t.m, 17, 1)) % 4, 1) || substr(t.m, 18, 3) || '-'
             || substr(t.m, 21, 12)),
       1 + (t.hs / 13) % 4
FROM t
CROSS JOIN w
JOIN climaster c ON c.client_id = t.client_id
JOIN jobmaster jm ON jm.job_id = t.jobm_id;

-- jobtasks: 0 to 5 tasks per job (about 2.6 on average). Jobs with job_id % 1200 = 600 repeat their
-- last task row exactly (legacy duplicates). A job's task count is its share of n_jt in proportion
-- to a pseudo-random weight (1..5), so the total is exact.
INSERT INTO jobtasks (job_id, task_id, staff_id, task_name, task_status, start_date, end_date,
                      est_hours, actual_hours, jt_uid)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), jb AS MATERIALIZED (
    SELECT job_id, job_status, job_date, completed_date, hj, p.n_task, p.n_staff,
           ((cw - w) * p.n_jt / tw)::int AS lo, (cw * p.n_jt / tw)::int AS hi
    FROM (SELECT jw.*, sum(w) OVER (ORDER BY job_id) AS cw, sum(w) OVER () AS tw
          FROM (SELECT job_id, job_status, job_date, completed_date,
                       CASE WHEN job_id % 1200 = 600 THEN 5
                            ELSE 1 + (hashtext(job_id || ':jt.w') & 2147483647) % 5 END AS w,
                       (hashtext(job_id || ':jt.j') & 2147483647) AS hj
                FROM jobshead) jw) ja
    CROSS JOIN p
), r AS (
    SELECT jb.job_id, jb.job_status, jb.job_date, jb.completed_date, jb.hj, jb.n_task, jb.n_staff,
           x AS k, jb.hi - jb.lo AS cnt,
           CASE WHEN jb.job_id % 1200 = 600 AND x = jb.hi - jb.lo AND x >= 2 THEN x - 1 ELSE x END AS ks
    FROM jb
    JOIN generate_series(1, 16) x ON x <= jb.hi - jb.lo
), r3 AS MATERIALIZED (
    SELECT r.job_id, r.job_status, r.job_date, r.completed_date, r.n_staff, r.k, r.ks,
           1 + (r.hj % r.n_task + (r.ks - 1) * (1 + r.n_task / 7)) % r.n_task AS task_id,
           (hashtext(r.job_id || ':' || r.ks || ':jt') & 2147483647) AS h,
           1 + (r.hj / 1000) % greatest(r.cnt, 1) AS cut,
           md5('jt:' || r.job_id || ':' || r.ks) AS m
    FROM r
), r4 AS MATERIALIZED (
    SELECT r3.job_id, r3.task_id, r3.completed_date, r3.n_staff, r3.h, r3.m, tm.task_name AS tname,
           CASE WHEN job_status IN ('Completed', 'Billed') THEN 'Completed'
                WHEN job_status = 'Open' THEN CASE WHEN ks = 1 AND h % 3 = 0 THEN 'In Progress'
                                                   ELSE 'Pending' END
                WHEN ks < cut THEN 'Completed'
                WHEN ks = cut THEN CASE WHEN job_status = 'On Hold' THEN 'On Hold' ELSE 'In Progress' END
                ELSE 'Pending' END AS st,
           job_date + ((ks - 1) * 3 + h % 4)::int AS sd,
           greatest(0.25, round(tm.default_hours * (4 + (h / 40) % 5) / 4 * 4) / 4) AS est
    FROM r3
    JOIN taskmaster tm ON tm.task_id = r3.task_id
)
SELECT job_id,
       task_id,
       1 + (h / 7) % n_staff,
       tname,
       st,
       sd,
       CASE WHEN st = 'Completed'
            THEN greatest(sd, least(coalesce(completed_date, date '2025-10-31'),
                                    sd + 1 + ((h / 4) % 10)::int)) END,
       est,
       CASE WHEN st = 'Completed' THEN greatest(0.25, round(est * (60 + (h / 200) % 81) / 100 * 4) / 4)
            WHEN st IN ('In Progress', 'On Hold') THEN round(est * ((h / 200) % 60) / 100 * 4) / 4
            END,
       upper(substr(m, 1, 8) || '-' || substr(m, 9, 4) || '-4' || substr(m, 14, 3) || '-'
             || substr('89ab', 1 + ascii(substr(m, 17, 1)) % 4, 1) || substr(m, 18, 3) || '-'
             || substr(m, 21, 12))
FROM r4;

-- taskchecklist: checklist items (about 5 each) for a spread-out subset of jobs
INSERT INTO taskchecklist (job_id, task_id, item_no, item_text, done, done_date)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['Obtain sales register for the period','Obtain purchase register',
                 'Download GSTR-2B from portal','Reconcile ITC as per books with GSTR-2B',
                 'Verify e-way bills for high value invoices','Check RCM liability',
                 'Prepare tax payment challan','Obtain client approval on working',
                 'File return and save acknowledgement','Send acknowledgement to client',
                 'Collect bank statements for all accounts','Verify TDS deducted with Form 26AS',
                 'Check AIS/TIS for unreported income','Compute capital gains',
                 'Verify 80C / 80D investment proofs','Obtain trial balance','Vouch major expense heads',
                 'Physical verification of fixed assets','Obtain management representation letter',
                 'Confirm balances with major debtors','Review board minutes',
                 'Check statutory dues payment dates','Prepare audit report draft',
                 'Partner review of working papers','Generate and upload UDIN',
                 'Update DSC of signatory','Verify MSME vendor payments (43B(h))',
                 'Prepare computation of income','Check advance tax paid','Archive working papers'] AS items
), sel AS (
    SELECT i, p.n_task, p.n_tc,
           ((i - 1)::bigint * p.n_job / nc.ncj)::int + 1
               + (hashtext(i || ':tc.j') & 2147483647) % greatest(1, p.n_job / nc.ncj) AS job_id,
           3 + (hashtext(i || ':tc.w') & 2147483647) % 5 AS w
    FROM p, LATERAL (SELECT greatest(1, p.n_tc / 5) AS ncj) nc, generate_series(1, nc.ncj) i
), sa AS (
    SELECT sel.*, sum(w) OVER (ORDER BY i) AS cw, sum(w) OVER () AS tw FROM sel
), sb AS (
    SELECT sa.*, ((cw - w) * n_tc / tw)::int AS lo, (cw * n_tc / tw)::int AS hi,
           (hashtext(job_id || ':tc') & 2147483647) AS hj
    FROM sa
), r AS (
    SELECT sb.job_id, sb.hj, sb.n_task, x AS k, sb.hi - sb.lo AS cnt,
           j.job_status, j.job_date, j.completed_date,
           coalesce(ft.task_id, 1 + sb.hj % sb.n_task) AS task_id
    FROM sb
    JOIN jobshead j ON j.job_id = sb.job_id
    LEFT JOIN LATERAL (SELECT jt.task_id FROM jobtasks jt WHERE jt.job_id = sb.job_id
                       ORDER BY jt.task_id LIMIT 1) ft ON true
    JOIN generate_series(1, 16) x ON x <= sb.hi - sb.lo
), d AS (
    SELECT r.*,
           job_status IN ('Completed', 'Billed') OR k <= (hj / 64) % (cnt + 1) AS dn
    FROM r
)
SELECT job_id,
       task_id,
       k::smallint,
       w.items[1 + ((hj / 8) % cardinality(w.items) + k - 1) % cardinality(w.items)],
       dn,
       CASE WHEN dn THEN least(coalesce(completed_date, date '2025-10-31'),
                               job_date + (k * 2 + (hj + k) % 3)::int) END
FROM d CROSS JOIN w
ORDER BY job_id, k;

-- workdiary: a staff member's time entries, 2 to 5 per (staff_id, wd_date), Aug to Oct 2025
INSERT INTO workdiary (staff_id, wd_date, job_id, task_id, hours, narration)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['Prepared GSTR-3B working','Reconciled bank statement','Client meeting',
                 'Verified TDS challans','Ledger scrutiny','Drafted notice reply',
                 'Filed return on portal','Vouching of expenses','Called client for pending documents',
                 'Reviewed audit working papers','Travel to client office',
                 'Computation of income','Data entry in Tally','Discussion with partner'] AS act
), dd AS (
    SELECT d, p.n_wd, p.n_job, p.n_task,
           1 + (d - 1) % p.n_staff AS staff_id,
           least(date '2025-10-31', date '2025-08-25' + (z.wk / 5) * 7 + z.wk % 5) AS wd_date,
           2 + (hashtext(d || ':wd.w') & 2147483647) % 3 AS w
    FROM p, generate_series(1, greatest(1, p.n_wd / 3)) d,
         LATERAL (SELECT ((d - 1) / p.n_staff) * 11 + (hashtext(d || ':wd.d') & 2147483647) % 11 AS wk) z
), da AS (
    SELECT dd.*, sum(w) OVER (ORDER BY d) AS cw, sum(w) OVER () AS tw FROM dd
), db AS (
    SELECT da.*, ((cw - w) * n_wd / tw)::int AS lo, (cw * n_wd / tw)::int AS hi FROM da
), rr AS MATERIALIZED (
    SELECT db.staff_id, db.wd_date, db.n_task, db.n_job, x AS k,
           (hashtext(db.d || ':' || x || ':wd') & 2147483647) AS h
    FROM db
    JOIN generate_series(1, 16) x ON x <= db.hi - db.lo
), r AS MATERIALIZED (
    SELECT rr.*, n_job - h % greatest(1, n_job * 15 / 100) AS job_id FROM rr
)
SELECT r.staff_id,
       r.wd_date,
       r.job_id,
       coalesce(ft.task_id, 1 + (r.h / 16) % r.n_task),
       (2 + (r.h / 64) % 22) * 0.25,
       CASE WHEN (r.h / 8192) % 20 = 0 THEN NULL
            ELSE w.act[1 + (r.h / 1024) % cardinality(w.act)] || ' - ' || c.client_name END
FROM r
CROSS JOIN w
JOIN jobshead j ON j.job_id = r.job_id
JOIN climaster c ON c.client_id = j.client_id
LEFT JOIN LATERAL (SELECT jt.task_id FROM jobtasks jt WHERE jt.job_id = r.job_id
                   ORDER BY jt.task_id LIMIT 1) ft ON true
ORDER BY r.staff_id, r.wd_date, r.k;

-- mbreminder: staff reminders about clients (rem_id unique, though the desktop does not enforce it)
INSERT INTO mbreminder (rem_id, staff_id, client_id, rem_date, rem_time, rem_subject, rem_notes,
                        rem_status)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['Follow up for pending documents','Collect signed ITR-V','Advance tax instalment due',
                 'DSC expiring - renew','GSTR-3B due date','TDS payment due','Audit report signing',
                 'Call regarding fee outstanding','ROC filing due','Meeting with client',
                 'Submit reply to GST notice','Collect stock statement'] AS subj,
           ARRAY['Client prefers calls after 4 pm','Ask for Form 16 and bank interest certificates',
                 'Fee of last year still pending','Documents to be collected from the factory',
                 'Partner to join the call','Send checklist by email first'] AS notes
), b AS (
    SELECT g, p.n_staff, p.n_cli, (hashtext(g || ':rem') & 2147483647) AS h
    FROM p, generate_series(1, p.n_rem) g
), n AS (
    SELECT b.*, 1 + (h / 8) % n_cli AS client_id, date '2024-04-01' + (h % 640)::int AS rd FROM b
)
SELECT n.g,
       1 + (n.h / 1024) % n.n_staff,
       n.client_id,
       n.rd,
       time '09:00' + ((n.h / 32) % 19) * interval '30 minutes',
       w.subj[1 + (n.h / 4096) % cardinality(w.subj)] || ' - ' || left(c.client_name, 80),
       CASE WHEN (n.h / 65536) % 10 < 3 THEN NULL
            ELSE w.notes[1 + (n.h / 1000000) % cardinality(w.notes)] END,
       CASE WHEN n.rd > date '2025-10-31' THEN 'Pending'
            WHEN (n.h / 128) % 10 < 7 THEN 'Done'
            WHEN (n.h / 128) % 10 < 8 THEN 'Cancelled'
            WHEN (n.h / 128) % 10 < 9 THEN 'Snoozed'
            ELSE 'Pending' END
FROM n
CROSS JOIN w
JOIN climaster c ON c.client_id = n.client_id
ORDER BY n.g;

-- mbremdetail: follow-up notes of reminders (remd_id unique, rem_id an existing reminder)
INSERT INTO mbremdetail (remd_id, rem_id, remd_date, remd_notes)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['Called client, no response','Client asked to call next week',
                 'Documents received partially','Email reminder sent',
                 'Spoke to accountant, will send by Friday','Visited office, collected papers',
                 'Rescheduled to next Monday','Completed, closing reminder',
                 'WhatsApp message sent to client','Client confirmed payment by NEFT'] AS notes
), b AS (
    SELECT g, (hashtext(g || ':remd') & 2147483647) AS h, 1 + (hashtext(g || ':remd.r') & 2147483647) % p.n_rem AS rem_id
    FROM p, generate_series(1, p.n_remd) g
)
SELECT b.g,
       b.rem_id,
       r.rem_date + (b.h % 12)::int,
       CASE WHEN (b.h / 4096) % 15 = 0 THEN NULL
            ELSE w.notes[1 + (b.h / 16) % cardinality(w.notes)] END
FROM b
CROSS JOIN w
JOIN mbreminder r ON r.rem_id = b.rem_id
ORDER BY b.g;

-- learequest: leave requests, approved by a partner or the senior manager
INSERT INTO learequest (lea_id, staff_id, from_date, to_date, leave_type, reason, lea_status,
                        approved_by)
WITH p AS MATERIALIZED (
    SELECT greatest(1, round(310 * s))::int AS n_con, greatest(1, round(726 * s))::int AS n_cli,
           greatest(1, round(148 * s))::int AS n_cliu, greatest(1, round(212 * s))::int AS n_task,
           greatest(1, round(96 * s))::int AS n_jobm, greatest(1, round(38 * s))::int AS n_staff,
           greatest(1, round(24562 * s))::int AS n_job, greatest(1, round(64542 * s))::int AS n_jt,
           greatest(1, round(1208 * s))::int AS n_tc, greatest(1, round(197 * s))::int AS n_wd,
           greatest(1, round(121 * s))::int AS n_rem, greatest(1, round(164 * s))::int AS n_remd,
           greatest(1, round(57 * s))::int AS n_lea
    FROM (SELECT coalesce(nullif(btrim(current_setting('tandem.seed_scale', true)), '')::numeric,
                          1.0) AS s) sc
), w AS (
    SELECT ARRAY['CL','CL','CL','SL','SL','EL','EL','EL','LOP','Comp Off'] AS lt,
           ARRAY['Fever','Family function','Personal work','Travel to native place',
                 'Medical appointment','Sister''s wedding','Exam preparation (CA Inter)',
                 'Festival - Diwali','Child unwell','Home renovation'] AS reason
), b AS (
    SELECT g, p.n_staff, (hashtext(g || ':lea') & 2147483647) AS h
    FROM p, generate_series(1, p.n_lea) g
), n AS (
    SELECT b.*, 1 + (h / 16) % n_staff AS staff_id,
           CASE WHEN g % 40 = 21 THEN 'Maternity' ELSE w.lt[1 + h % cardinality(w.lt)] END AS ltype,
           date '2023-01-02' + ((h / 256) % 1060)::int AS fd
    FROM b, w
), a AS (
    SELECT n.*, 1 + (h / 65536) % least(3, n_staff) AS ap0 FROM n
)
SELECT a.g,
       a.staff_id,
       a.fd,
       a.fd + CASE a.ltype WHEN 'Maternity' THEN 181 WHEN 'EL' THEN 2 + (a.h / 8) % 8
                           ELSE (a.h / 8) % 3 END,
       a.ltype,
       CASE WHEN a.ltype = 'Maternity' THEN 'Maternity leave as per policy'
            WHEN a.ltype = 'Comp Off' THEN 'Worked on Sunday for the tax audit deadline'
            WHEN (a.h / 4096) % 8 = 0 THEN NULL
            ELSE w.reason[1 + (a.h / 1024) % cardinality(w.reason)] END,
       CASE WHEN a.fd > date '2025-10-15' THEN 'Pending'
            WHEN (a.h / 100000) % 100 < 80 THEN 'Approved'
            WHEN (a.h / 100000) % 100 < 92 THEN 'Rejected'
            ELSE 'Cancelled' END,
       CASE WHEN a.ap0 = a.staff_id AND a.n_staff > 1 THEN CASE WHEN a.staff_id = 1 THEN 2 ELSE 1 END
            ELSE a.ap0 END
FROM a
CROSS JOIN w
ORDER BY a.g;

ANALYZE orgmaster, locmaster, conmaster, climaster, cliunimaster, taskmaster, jobmaster, mbstaff,
        jobshead, jobtasks, taskchecklist, workdiary, mbreminder, mbremdetail, learequest;
