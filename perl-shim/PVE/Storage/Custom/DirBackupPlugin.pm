package PVE::Storage::Custom::DirBackupPlugin;

# Storage plugin of type 'dirbackup'. PVE loads it in every process that touches storage.cfg, so
# it stays a thin shim: the registration class methods are answered here, every other method is
# one call to dirbackupd (see protocol/catalog.json for the names and parameters).

use strict;
use warnings;

use PVE::DirBackup::Client ();
use PVE::BackupProvider::Plugin::DirBackup;

use base qw(PVE::Storage::Plugin);

# Short private names for the client helpers: the public subs of this package must be exactly the
# PVE methods, so nothing is imported under its own name.
*_call = \&PVE::DirBackup::Client::call;
*_int = \&PVE::DirBackup::Client::untaint_int;
*_volname = \&PVE::DirBackup::Client::untaint_volname;
*_path = \&PVE::DirBackup::Client::untaint_path;
*_word = \&PVE::DirBackup::Client::untaint_word;
*_bool = \&PVE::DirBackup::Client::json_bool;
*_data = \&PVE::DirBackup::Client::plain_data;
*_num = \&PVE::DirBackup::Client::param_int;

# ---- registration (answered locally) ---------------------------------------------------------

# PVE 8.4 has APIVER 11, and everything this plugin needs exists since 11. Reporting the running
# APIVER (up to the newest we know) avoids the "older storage API" warning in every PVE process.
# can() + call instead of PVE::Storage::APIVER(): PVE::Storage loads us, and a compile-time
# constant would be inlined.
my $API_MIN = 11;
my $API_MAX = 15;

sub api {
    my $apiver_sub = PVE::Storage->can('APIVER');
    return $API_MIN if !$apiver_sub;
    my $apiver = $apiver_sub->();
    return $API_MIN if $apiver < $API_MIN;
    return $API_MAX if $apiver > $API_MAX;
    return $apiver;
}

sub type {
    return 'dirbackup';
}

sub plugindata {
    return {
        content => [{ backup => 1, none => 1 }, { backup => 1 }],
        features => { 'backup-provider' => 1 },
        # an empty hash means "none"; without the key PVE would treat 'password' etc. as secret
        'sensitive-properties' => {},
    };
}

# New properties must be prefixed 'dirbackup-': redeclaring a name another plugin owns makes
# PVE::Storage::Plugin->init die and breaks storage loading on the whole node.
sub properties {
    return {
        'dirbackup-vm-mode' => {
            description => "VM backups: 'incremental' copies only what QEMU's dirty bitmap marks"
                . " changed since the previous backup; 'full' reads every disk completely each time.",
            type => 'string',
            enum => ['incremental', 'full'],
            default => 'incremental',
            optional => 1,
        },
        'dirbackup-ct-format' => {
            description => "Container backups: a 'tar' archive (restored by tar) or a 'squashfs' image"
                . " (restored from a read-only mount; keeps no POSIX ACLs).",
            type => 'string',
            enum => ['tar', 'squashfs'],
            default => 'tar',
            optional => 1,
        },
    };
}

# prune-backups and max-protected-backups are PVE's own properties: listed here, never redeclared.
sub options {
    return {
        path => { fixed => 1 },
        nodes => { optional => 1 },
        disable => { optional => 1 },
        content => { optional => 1 },
        shared => { optional => 1 },
        'max-protected-backups' => { optional => 1 },
        'prune-backups' => { optional => 1 },
        'dirbackup-vm-mode' => { optional => 1 },
        'dirbackup-ct-format' => { optional => 1 },
    };
}

sub new_backup_provider {
    my ($class, $scfg, $storeid, $log_function) = @_;
    return PVE::BackupProvider::Plugin::DirBackup->new($class, $scfg, $storeid, $log_function);
}

# ---- storage lifecycle -------------------------------------------------------------------

sub on_add_hook {
    my ($class, $storeid, $scfg, %sensitive) = @_;
    _call('on_add_hook', { storeid => $storeid, scfg => _data($scfg) });
    return undef;
}

sub on_update_hook {
    my ($class, $storeid, $scfg, %sensitive) = @_;
    _call('on_update_hook', { storeid => $storeid, scfg => _data($scfg) });
    return undef;
}

sub on_update_hook_full {
    my ($class, $storeid, $scfg, $update, $delete, $sensitive) = @_;
    _call('on_update_hook_full', {
        storeid => $storeid,
        scfg => _data($scfg),
        update => _data($update),
        delete => _data($delete),
    });
    return undef;
}

sub on_delete_hook {
    my ($class, $storeid, $scfg) = @_;
    _call('on_delete_hook', { storeid => $storeid, scfg => _data($scfg) });
    return undef;
}

sub check_connection {
    my ($class, $storeid, $scfg) = @_;
    my $res = _call('check_connection', { storeid => $storeid, scfg => _data($scfg) });
    return $res ? 1 : 0;
}

sub activate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    _call('activate_storage', { storeid => $storeid, scfg => _data($scfg) });
    return 1;
}

sub deactivate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    _call('deactivate_storage', { storeid => $storeid, scfg => _data($scfg) });
    return 1;
}

# pvestatd asks every few seconds for every storage: a missing or hung daemon must show up as an
# inactive storage within the one-second deadline, not as an error or a log line.
sub status {
    my ($class, $storeid, $scfg, $cache) = @_;
    my @res = eval {
        my $r = _call('status', { storeid => $storeid, scfg => _data($scfg) });
        ref($r) eq 'HASH'
            ? (_int($r->{total}), _int($r->{avail}), _int($r->{used}), $r->{active} ? 1 : 0)
            : ();
    };
    return (@res == 4 && !grep { !defined } @res) ? @res : (0, 0, 0, 0);
}

# ---- volume names and listing ----------------------------------------------------------

sub parse_volname {
    my ($class, $volname) = @_;
    my $r = _call('parse_volname', { volname => $volname });
    return (
        _word($r->{vtype}, 'volume type'), _volname($r->{name}, 'volume name'),
        _int($r->{vmid}, 'vmid'), undef, undef, undef, _word($r->{format}, 'format'),
    );
}

sub path {
    my ($class, $scfg, $volname, $storeid, $snapname) = @_;
    my $r = _call('path', {
        storeid => $storeid,
        scfg => _data($scfg),
        volname => $volname,
        snapname => $snapname,
    });
    return _path_result($r);
}

sub filesystem_path {
    my ($class, $scfg, $volname, $snapname) = @_;
    my $r = _call('filesystem_path', { scfg => _data($scfg), volname => $volname, snapname => $snapname });
    return _path_result($r);
}

sub list_images {
    my ($class, $storeid, $scfg, $vmid, $vollist, $cache) = @_;
    my $r = _call('list_images', {
        storeid => $storeid,
        scfg => _data($scfg),
        vmid => _num($vmid),
        vollist => _data($vollist),
    });
    return [map { _volume_entry($_) } @{ $r // [] }];
}

sub list_volumes {
    my ($class, $storeid, $scfg, $vmid, $content_types) = @_;
    my $r = _call('list_volumes', {
        storeid => $storeid,
        scfg => _data($scfg),
        vmid => _num($vmid),
        'content-types' => _data($content_types),
    });
    return [map { _volume_entry($_) } @{ $r // [] }];
}

sub volume_size_info {
    my ($class, $scfg, $storeid, $volname, $timeout) = @_;
    my $r = _call('volume_size_info', { storeid => $storeid, scfg => _data($scfg), volname => $volname });
    my $size = _int($r->{size}, 'size');
    return $size if !wantarray;
    return (
        $size, _word($r->{format}, 'format'), _int($r->{used}, 'used size'),
        _volname($r->{parent}, 'parent'), _int($r->{ctime}, 'ctime'),
    );
}

# ---- attributes, delete, prune -------------------------------------------------------------

sub get_volume_attribute {
    my ($class, $scfg, $storeid, $volname, $attribute) = @_;
    my $r = _call('get_volume_attribute', {
        storeid => $storeid,
        scfg => _data($scfg),
        volname => $volname,
        attribute => $attribute,
    });
    return $r ? 1 : 0 if defined($attribute) && $attribute eq 'protected';
    return defined($r) ? "$r" : undef;
}

# PVE hands protected over as 1, '1', 0 or '' depending on the caller; the daemon gets a boolean.
sub update_volume_attribute {
    my ($class, $scfg, $storeid, $volname, $attribute, $value) = @_;
    $value = _bool($value) if defined($attribute) && $attribute eq 'protected';
    _call('update_volume_attribute', {
        storeid => $storeid,
        scfg => _data($scfg),
        volname => $volname,
        attribute => $attribute,
        value => $value,
    });
    return undef;
}

# The daemon deletes synchronously (merging a chain when needed), so there is never a cleanup
# worker to hand back to vdisk_free.
sub free_image {
    my ($class, $storeid, $scfg, $volname, $isBase, $format) = @_;
    _call('free_image', {
        storeid => $storeid,
        scfg => _data($scfg),
        volname => $volname,
        isBase => _bool($isBase),
        format => $format,
    });
    return undef;
}

sub prune_backups {
    my ($class, $scfg, $storeid, $keep, $vmid, $type, $dryrun, $logfunc) = @_;
    # the same default as PVE::Storage::Plugin::prune_backups
    $logfunc //= sub { print "$_[1]\n" };
    my $r = _call('prune_backups', {
        storeid => $storeid,
        scfg => _data($scfg),
        keep => _keep($keep),
        vmid => _num($vmid),
        type => $type,
        dryrun => _bool($dryrun),
    }, log => $logfunc);
    return [map { _prune_entry($_) } @{ $r // [] }];
}

# ---- volume activation -----------------------------------------------------------------

sub activate_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $cache, $hints) = @_;
    _call('activate_volume', _vol_params($storeid, $scfg, $volname, snapname => $snapname));
    return 1;
}

sub deactivate_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $cache) = @_;
    _call('deactivate_volume', _vol_params($storeid, $scfg, $volname, snapname => $snapname));
    return 1;
}

sub map_volume {
    my ($class, $storeid, $scfg, $volname, $snapname) = @_;
    my $r = _call('map_volume', _vol_params($storeid, $scfg, $volname, snapname => $snapname));
    return _path($r, 'mapped path');
}

sub unmap_volume {
    my ($class, $storeid, $scfg, $volname, $snapname) = @_;
    _call('unmap_volume', _vol_params($storeid, $scfg, $volname, snapname => $snapname));
    return 1;
}

# ---- image, snapshot and migration paths (the daemon refuses them: not-supported) ----------

sub alloc_image {
    my ($class, $storeid, $scfg, $vmid, $fmt, $name, $size) = @_;
    my $r = _call('alloc_image', {
        storeid => $storeid,
        scfg => _data($scfg),
        vmid => _num($vmid),
        fmt => $fmt,
        name => $name,
        size => _num($size),
    });
    return _volname($r, 'volume name');
}

sub clone_image {
    my ($class, $scfg, $storeid, $volname, $vmid, $snap) = @_;
    my $r = _call('clone_image', _vol_params($storeid, $scfg, $volname, vmid => _num($vmid), snap => $snap));
    return _volname($r, 'volume name');
}

sub create_base {
    my ($class, $storeid, $scfg, $volname) = @_;
    my $r = _call('create_base', _vol_params($storeid, $scfg, $volname));
    return _volname($r, 'volume name');
}

sub volume_resize {
    my ($class, $scfg, $storeid, $volname, $size, $running) = @_;
    _call('volume_resize', _vol_params($storeid, $scfg, $volname, size => _num($size), running => _bool($running)));
    return undef;
}

sub volume_snapshot {
    my ($class, $scfg, $storeid, $volname, $snap) = @_;
    _call('volume_snapshot', _vol_params($storeid, $scfg, $volname, snap => $snap));
    return undef;
}

sub volume_snapshot_rollback {
    my ($class, $scfg, $storeid, $volname, $snap) = @_;
    _call('volume_snapshot_rollback', _vol_params($storeid, $scfg, $volname, snap => $snap));
    return undef;
}

sub volume_snapshot_delete {
    my ($class, $scfg, $storeid, $volname, $snap, $running) = @_;
    _call('volume_snapshot_delete', _vol_params($storeid, $scfg, $volname, snap => $snap, running => _bool($running)));
    return undef;
}

sub rename_volume {
    my ($class, $scfg, $storeid, $source_volname, $target_vmid, $target_volname) = @_;
    my $r = _call('rename_volume', {
        storeid => $storeid,
        scfg => _data($scfg),
        'source-volname' => $source_volname,
        'target-vmid' => _num($target_vmid),
        'target-volname' => $target_volname,
    });
    return _volname($r, 'volume id');
}

sub rename_snapshot {
    my ($class, $scfg, $storeid, $volname, $source_snap, $target_snap) = @_;
    _call('rename_snapshot', _vol_params(
        $storeid, $scfg, $volname, 'source-snap' => $source_snap, 'target-snap' => $target_snap,
    ));
    return undef;
}

# The file handle stays in this process: the daemon refuses export and import before any data
# would have to cross the socket.
sub volume_export {
    my ($class, $scfg, $storeid, $fh, $volname, $format, $snapshot, $base_snapshot, $with_snapshots) = @_;
    _call('volume_export', _vol_params($storeid, $scfg, $volname, format => $format));
    return undef;
}

sub volume_import {
    my ($class, $scfg, $storeid, $fh, $volname, $format, $snapshot, $base_snapshot, $with_snapshots,
        $allow_rename) = @_;
    my $r = _call('volume_import', _vol_params($storeid, $scfg, $volname, format => $format));
    return _volname($r, 'volume id');
}

sub volume_export_formats {
    my ($class, $scfg, $storeid, $volname, $snapshot, $base_snapshot, $with_snapshots) = @_;
    my $r = _call('volume_export_formats', _vol_params($storeid, $scfg, $volname));
    return map { _volname($_, 'export format') } @{ $r // [] };
}

sub volume_import_formats {
    my ($class, $scfg, $storeid, $volname, $snapshot, $base_snapshot, $with_snapshots) = @_;
    my $r = _call('volume_import_formats', _vol_params($storeid, $scfg, $volname));
    return map { _volname($_, 'import format') } @{ $r // [] };
}

sub volume_has_feature {
    my ($class, $scfg, $feature, $storeid, $volname, $snapname, $running, $opts) = @_;
    my $r = _call('volume_has_feature', _vol_params(
        $storeid, $scfg, $volname, feature => $feature, snapname => $snapname,
    ));
    return $r ? 1 : undef;
}

# ---- private helpers -----------------------------------------------------------------------

sub _vol_params {
    my ($storeid, $scfg, $volname, %more) = @_;
    return { storeid => $storeid, scfg => _data($scfg), volname => $volname, %more };
}

sub _path_result {
    my ($r) = @_;
    my $path = _path($r->{path}, 'path');
    return $path if !wantarray;
    return ($path, _int($r->{vmid}, 'vmid'), _word($r->{vtype}, 'volume type'));
}

# Keys PVE's content index knows; values untainted one by one, absent ones left out.
sub _volume_entry {
    my ($v) = @_;
    die "dirbackupd returned an invalid volume entry\n" if ref($v) ne 'HASH';
    my $e = {
        volid => _volname($v->{volid}, 'volume id'),
        content => _word($v->{content}, 'content type'),
        format => _word($v->{format}, 'format'),
        size => _int($v->{size}, 'size'),
        ctime => _int($v->{ctime}, 'ctime'),
        vmid => _int($v->{vmid}, 'vmid'),
        subtype => _word($v->{subtype}, 'subtype'),
        used => _int($v->{used}, 'used size'),
        parent => _volname($v->{parent}, 'parent'),
        # plain text, shown in the GUI; never used in a path or a command
        notes => $v->{notes},
    };
    $e->{protected} = 1 if $v->{protected};
    delete $e->{$_} for grep { !defined($e->{$_}) } keys %$e;
    return $e;
}

sub _prune_entry {
    my ($v) = @_;
    die "dirbackupd returned an invalid prune entry\n" if ref($v) ne 'HASH';
    my $e = {
        volid => _volname($v->{volid}, 'volume id'),
        ctime => _int($v->{ctime}, 'ctime'),
        type => _word($v->{type}, 'backup type'),
        vmid => _int($v->{vmid}, 'vmid'),
        mark => _word($v->{mark}, 'prune mark'),
    };
    delete $e->{vmid} if !defined($e->{vmid});
    return $e;
}

# PVE parses prune-backups into strings ("keep-last" => "3"); the daemon expects numbers, and a
# boolean for keep-all.
sub _keep {
    my ($keep) = @_;
    return undef if ref($keep) ne 'HASH';
    return { map { ($_ => $_ eq 'keep-all' ? _bool($keep->{$_}) : _num($keep->{$_})) } keys %$keep };
}

1;
