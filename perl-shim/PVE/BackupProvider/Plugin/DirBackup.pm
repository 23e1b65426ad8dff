package PVE::BackupProvider::Plugin::DirBackup;

# Backup provider of the 'dirbackup' storage. vzdump, qemu-server and pve-container call it; each
# method is one call to dirbackupd with the storage context (storeid, scfg). The daemon keeps all
# state keyed by what PVE passes, because PVE creates a new provider object per restore step and
# runs backup_container in a forked child whose changes to $self are lost.

use strict;
use warnings;

use PVE::DirBackup::Client ();

use base qw(PVE::BackupProvider::Plugin::Base);

# Short private names for the client helpers: the public subs of this package must be exactly the
# provider API, so nothing is imported under its own name.
*_client_call = \&PVE::DirBackup::Client::call;
*_int = \&PVE::DirBackup::Client::untaint_int;
*_volname = \&PVE::DirBackup::Client::untaint_volname;
*_path = \&PVE::DirBackup::Client::untaint_path;
*_word = \&PVE::DirBackup::Client::untaint_word;
*_bool = \&PVE::DirBackup::Client::json_bool;
*_data = \&PVE::DirBackup::Client::plain_data;
*_num = \&PVE::DirBackup::Client::param_int;
*_bytes_out = \&PVE::DirBackup::Client::encode_bytes;
*_bytes_in = \&PVE::DirBackup::Client::decode_bytes;

sub new {
    my ($class, $storage_plugin, $scfg, $storeid, $log_function) = @_;
    my $self = {
        storage_plugin => $storage_plugin,
        scfg => $scfg,
        storeid => $storeid,
        log_function => $log_function,
    };
    return bless $self, $class;
}

# Printed several times per guest: no round trip for it.
sub provider_name {
    my ($self) = @_;
    return 'dirbackup';
}

# ---- backup job ----------------------------------------------------------------------------

sub job_init {
    my ($self, $start_time) = @_;
    $self->_call('job_init', { 'start-time' => _num($start_time) });
    return undef;
}

# vzdump calls it again on its error path when the first call died; the daemon makes it
# idempotent and the shim keeps no state that a second call could trip over.
sub job_cleanup {
    my ($self) = @_;
    $self->_call('job_cleanup', {});
    return undef;
}

sub backup_init {
    my ($self, $vmid, $vmtype, $start_time) = @_;
    my $r = $self->_call('backup_init', {
        vmid => _num($vmid),
        vmtype => $vmtype,
        'start-time' => _num($start_time),
    });
    die "dirbackupd returned no archive name\n" if ref($r) ne 'HASH';
    return { 'archive-name' => _volname($r->{'archive-name'}, 'archive name') };
}

# On the failure path vmtype may be undef and there may have been no backup_init at all.
sub backup_cleanup {
    my ($self, $vmid, $vmtype, $success, $info) = @_;
    my $r = $self->_call('backup_cleanup', {
        vmid => _num($vmid),
        vmtype => $vmtype,
        success => _bool($success),
        info => _data($info),
    });
    my $stats = ref($r) eq 'HASH' && ref($r->{stats}) eq 'HASH' ? $r->{stats} : {};
    my $size = _int($stats->{'archive-size'}, 'archive size');
    return { stats => { defined($size) ? ('archive-size' => $size) : () } };
}

sub backup_get_mechanism {
    my ($self, $vmid, $vmtype) = @_;
    my $r = $self->_call('backup_get_mechanism', { vmid => _num($vmid), vmtype => $vmtype });
    return _word($r, 'backup mechanism');
}

# vzdump does not wrap this call in eval: a die here would abort the whole job and skip the
# remaining guests. Failures become a warning in the task log. The one exception is the task being
# stopped: the signal handler's die must reach vzdump so that it stops the job.
sub backup_handle_log_file {
    my ($self, $vmid, $filename) = @_;
    eval { $self->_call('backup_handle_log_file', { vmid => _num($vmid), filename => $filename }) };
    my $err = $@;
    return undef if !$err;
    die $err if $err eq "interrupted by signal\n";
    chomp($err);
    eval { $self->_log('warn', "unable to store the backup log: $err") };
    return undef;
}

# ---- VM backup ---------------------------------------------------------------------------

sub backup_vm_query_incremental {
    my ($self, $vmid, $volumes) = @_;
    my $r = $self->_call('backup_vm_query_incremental', { vmid => _num($vmid), volumes => _data($volumes) });
    return undef if ref($r) ne 'HASH';
    return { map { ($_ => _word($r->{$_}, 'incremental mode')) } keys %$r };
}

# file-handle and next-dirty-region cannot cross the socket; plain_data leaves them out. The
# daemon answers the nbd mechanism, so they never occur.
sub backup_vm {
    my ($self, $vmid, $guest_config, $volumes, $info) = @_;
    $self->_call('backup_vm', {
        vmid => _num($vmid),
        'guest-config' => _bytes_out($guest_config),
        volumes => _data($volumes),
        info => _info($info),
    });
    return undef;
}

# ---- container backup --------------------------------------------------------------------

sub backup_container_prepare {
    my ($self, $vmid, $info) = @_;
    $self->_call('backup_container_prepare', { vmid => _num($vmid), info => _info($info) });
    return undef;
}

# For an unprivileged container this runs in a forked child as mapped root, which the daemon would
# refuse as a new peer: it borrows the connection the parent opened in backup_container_prepare
# (the parent waits in run_fork meanwhile).
sub backup_container {
    my ($self, $vmid, $guest_config, $exclude_patterns, $info) = @_;
    $self->_call('backup_container', {
        vmid => _num($vmid),
        'guest-config' => _bytes_out($guest_config),
        'exclude-patterns' => _data($exclude_patterns // []),
        info => _info($info),
        # the daemon runs the archiver in this process's user and mount namespaces
        pid => $$ + 0,
    }, inherit => 1);
    return undef;
}

# ---- restore -------------------------------------------------------------------------------
# pve-container and extract_vzdump_config still pass a leftover $storeid after $volname
# (PVE-API.md 3.4): $volname is always the first argument, info the last one if it is a hash.

sub restore_get_mechanism {
    my ($self, $volname, @rest) = @_;
    my $r = $self->_call('restore_get_mechanism', { volname => $volname });
    die "dirbackupd returned no restore mechanism\n" if ref($r) ne 'HASH';
    return (_word($r->{mechanism}, 'restore mechanism'), _word($r->{vmtype}, 'guest type'));
}

sub archive_get_guest_config {
    my ($self, $volname, @rest) = @_;
    my $r = $self->_call('archive_get_guest_config', { volname => $volname });
    return _bytes_in($r, 'guest configuration');
}

sub archive_get_firewall_config {
    my ($self, $volname, @rest) = @_;
    my $r = $self->_call('archive_get_firewall_config', { volname => $volname });
    return _bytes_in($r, 'firewall configuration');
}

sub restore_vm_init {
    my ($self, $volname, @rest) = @_;
    my $r = $self->_call('restore_vm_init', { volname => $volname });
    die "dirbackupd returned no device list\n" if ref($r) ne 'HASH';
    my $devices = {};
    for my $device (keys %$r) {
        my $d = ref($r->{$device}) eq 'HASH' ? $r->{$device} : {};
        $devices->{$device} = { size => _int($d->{size}, "size of $device") };
    }
    return $devices;
}

sub restore_vm_cleanup {
    my ($self, $volname, @rest) = @_;
    $self->_call('restore_vm_cleanup', { volname => $volname });
    return undef;
}

sub restore_vm_volume_init {
    my ($self, $volname, $device, $info) = @_;
    my $r = $self->_call('restore_vm_volume_init', {
        volname => $volname,
        device => $device,
        info => _data(ref($info) eq 'HASH' ? $info : undef),
    });
    die "dirbackupd returned no qemu-img path\n" if ref($r) ne 'HASH';
    return { 'qemu-img-path' => _path($r->{'qemu-img-path'}, 'qemu-img path') };
}

sub restore_vm_volume_cleanup {
    my ($self, $volname, $device, $info) = @_;
    $self->_call('restore_vm_volume_cleanup', {
        volname => $volname,
        device => $device,
        info => _data(ref($info) eq 'HASH' ? $info : undef),
    });
    return undef;
}

sub restore_container_init {
    my ($self, $volname, @rest) = @_;
    my $r = $self->_call('restore_container_init', { volname => $volname, info => _last_info(@rest) });
    die "dirbackupd returned no restore source\n" if ref($r) ne 'HASH';
    my $res = {};
    for my $key ('tar-path', 'archive-directory') {
        $res->{$key} = _path($r->{$key}, $key) if defined($r->{$key});
    }
    return $res;
}

sub restore_container_cleanup {
    my ($self, $volname, @rest) = @_;
    $self->_call('restore_container_cleanup', { volname => $volname, info => _last_info(@rest) });
    return undef;
}

# ---- private helpers -----------------------------------------------------------------------

sub _call {
    my ($self, $method, $params, %opts) = @_;
    my %p = (storeid => $self->{storeid}, scfg => _data($self->{scfg}), %$params);
    return _client_call($method, \%p, log => sub { $self->_log(@_) }, %opts);
}

sub _log {
    my ($self, $level, $message) = @_;
    my $log = $self->{log_function};
    if ($log) {
        $log->($level, $message);
    } else {
        print uc($level) . ": $message\n";
    }
    return;
}

# The same hash is passed to backup_container_prepare and backup_container: work on a copy.
sub _info {
    my ($info) = @_;
    my $copy = _data(ref($info) eq 'HASH' ? $info : {});
    $copy->{'firewall-config'} = _bytes_out($info->{'firewall-config'}) if defined($copy->{'firewall-config'});
    $copy->{'bandwidth-limit'} = _num($copy->{'bandwidth-limit'}) if defined($copy->{'bandwidth-limit'});
    $copy->{'backup-user-id'} = _num($copy->{'backup-user-id'}) if defined($copy->{'backup-user-id'});
    return $copy;
}

sub _last_info {
    my (@rest) = @_;
    return @rest && ref($rest[-1]) eq 'HASH' ? _data($rest[-1]) : undef;
}

1;
