#!/usr/bin/perl -T

# Every catalogue method, called through the plugin or the provider with PVE's positional
# arguments, reaches the daemon under its own name with the catalogue's named params (no unknown
# key, every required one present, each of the catalogue's type), and its answer comes back in the
# shape PVE expects.

use strict;
use warnings;

use Test::More;

use JSON;
use MIME::Base64 qw(encode_base64 decode_base64);

use DirBackupTest::Catalog qw(catalog methods_of_side);
use DirBackupTest::FakeDaemon;
use PVE::Storage::Custom::DirBackupPlugin;

my $plugin = 'PVE::Storage::Custom::DirBackupPlugin';
my $cat = catalog();

my $SCFG = { type => 'dirbackup', path => '/tmp/st1', content => { backup => 1 }, shared => 0 };
my $VOLNAME = 'backup/100/qemu-1700000000';
my $GUEST_CONFIG = "name: vm\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n\0\x01\x7f\x80\xfe\xff";
my $FW_CONFIG = "[OPTIONS]\nenable: 1\n\xff\0";

# PVE's positional arguments by catalogue name. Numbers come as strings, the way PVE often has
# them, to show the shim sends integers anyway.
my %ARG = (
    storeid => 'st1',
    scfg => $SCFG,
    cache => {},
    hints => { 'guest-is-running' => 1 },
    volname => $VOLNAME,
    snapname => 'snap1',
    vmid => '100',
    vollist => ["st1:$VOLNAME"],
    'content-types' => ['backup'],
    timeout => 5,
    attribute => 'notes',
    value => 'a note',
    isBase => 0,
    format => 'directory',
    keep => { 'keep-last' => '3' },
    type => 'qemu',
    dryrun => 1,
    logfunc => sub { },
    fmt => 'raw',
    name => 'vm-100-disk-0',
    size => '1024',
    running => 0,
    snap => 'snap1',
    'source-volname' => $VOLNAME,
    'target-vmid' => '101',
    'target-volname' => 'backup/101/qemu-1700000000',
    'source-snap' => 'a',
    'target-snap' => 'b',
    fh => \*STDERR,
    snapshot => undef,
    'base-snapshot' => undef,
    'with-snapshots' => 0,
    'allow-rename' => 0,
    feature => 'snapshot',
    opts => {},
    update => { 'max-protected-backups' => 3 },
    delete => ['shared'],
    sensitive => { password => 'secret' },
    'start-time' => '1700000000',
    vmtype => 'qemu',
    success => 1,
    info => {},
    filename => '/var/log/vzdump/qemu-100.log',
    volumes => {
        'drive-scsi0' => {
            size => 1073741824,
            'bitmap-mode' => 'new',
            'nbd-path' => '/run/qemu-server/100.backup-access.1/100-nbd.backup-access',
            'bitmap-name' => 'snapshot-access:st1',
        },
    },
    'guest-config' => $GUEST_CONFIG,
    'exclude-patterns' => ['/tmp/?*', '/var/tmp/?*'],
    device => 'drive-scsi0',
);

my %INFO = (
    backup_vm => { 'bandwidth-limit' => 1048576, 'firewall-config' => $FW_CONFIG },
    backup_container_prepare => {
        directory => '/mnt/vzsnap0', sources => ['./'], 'backup-user-id' => 100000,
        'firewall-config' => $FW_CONFIG,
    },
    backup_container => {
        directory => '/mnt/vzsnap0', sources => ['./'], 'backup-user-id' => 100000,
        'firewall-config' => $FW_CONFIG,
    },
    backup_cleanup => { error => 'something failed' },
);

my $ENTRY = {
    volid => "st1:$VOLNAME", content => 'backup', format => 'directory', size => 12345,
    ctime => 1700000000, vmid => 100, subtype => 'qemu', notes => "vor dem Update \x{2713}",
    protected => JSON::false, parent => undef,
};
my $ENTRY2 = {
    %$ENTRY, volid => 'st1:backup/100/qemu-1700000500', ctime => 1700000500, notes => undef,
    protected => JSON::true, parent => $VOLNAME,
};

my %ANSWER = (
    status => [[reply => { total => 1000, avail => 600, used => 400, active => JSON::true }]],
    check_connection => [[reply => JSON::true]],
    parse_volname => [[reply => { vtype => 'backup', name => '100/qemu-1700000000', vmid => 100, format => 'directory' }]],
    path => [[reply => { path => '/tmp/st1/100/qemu-1700000000', vmid => 100, vtype => 'backup' }]],
    filesystem_path => [[reply => { path => '/tmp/st1/100/qemu-1700000000', vmid => 100, vtype => 'backup' }]],
    list_images => [[reply => []]],
    list_volumes => [[reply => [$ENTRY, $ENTRY2]]],
    volume_size_info => [[reply => { size => 12345, format => 'directory', used => 12000, parent => undef, ctime => 1700000000 }]],
    get_volume_attribute => [[reply => 'a note']],
    prune_backups => [
        [log => info => "removing backup 'st1:backup/100/qemu-1600000000'"],
        [reply => [{ volid => "st1:$VOLNAME", ctime => 1700000000, type => 'qemu', vmid => 100, mark => 'keep' }]],
    ],
    volume_has_feature => [[reply => JSON::false]],
    volume_export_formats => [[reply => []]],
    volume_import_formats => [[reply => []]],
    backup_init => [[reply => { 'archive-name' => '100/qemu-1700000000' }]],
    backup_cleanup => [[reply => { stats => { 'archive-size' => 4096 } }]],
    backup_get_mechanism => [[reply => 'nbd']],
    backup_vm_query_incremental => [[reply => { 'drive-scsi0' => 'new' }]],
    backup_vm => [[log => info => 'drive-scsi0: transferred 1.0 GiB'], [reply => undef]],
    restore_get_mechanism => [[reply => { mechanism => 'qemu-img', vmtype => 'qemu' }]],
    archive_get_guest_config => [[reply => encode_base64($GUEST_CONFIG, '')]],
    archive_get_firewall_config => [[reply => undef]],
    restore_vm_init => [[reply => { 'drive-scsi0' => { size => 1073741824 } }]],
    restore_vm_volume_init => [[reply => { 'qemu-img-path' => '/run/dirbackupd/restore/1/drive-scsi0' }]],
    restore_container_init => [[reply => { 'tar-path' => '/tmp/st1/100/lxc-1700000000/archive.tar' }]],
);

# image, snapshot and migration paths: the daemon refuses them
for my $m (qw(alloc_image clone_image create_base volume_resize volume_snapshot volume_snapshot_rollback
    volume_snapshot_delete rename_volume rename_snapshot volume_export volume_import map_volume))
{
    $ANSWER{$m} = [[error => 1010, "$m: not supported by a backup storage"]];
}

my $daemon = DirBackupTest::FakeDaemon->new(handler => sub {
    my ($req) = @_;
    return @{ $ANSWER{ $req->{method} } // [] };
});

my @logged;
my $provider = $plugin->new_backup_provider($SCFG, 'st1', sub { push @logged, [@_] });

sub positional_args {
    my ($method, $entry) = @_;
    my @args;
    for my $name (@{ $entry->{args} }) {
        if ($name eq '%sensitive') {
            push @args, %{ $ARG{sensitive} };
            next;
        }
        die "no sample value for argument '$name'\n" if !exists $ARG{$name};
        push @args, $name eq 'info' && $INFO{$method} ? $INFO{$method} : $ARG{$name};
    }
    return @args;
}

# JSON type of a decoded value as the catalogue names it
sub json_type_ok {
    my ($value, $type) = @_;
    my $optional = $type =~ s/\?$//;
    return $optional if !defined($value);
    return 1 if $type eq 'any';
    my $text = JSON->new->allow_nonref->canonical->encode($value);
    return ref($value) eq 'HASH' if $type eq 'object';
    return ref($value) eq 'ARRAY' if $type eq 'array';
    return JSON::is_bool($value) if $type eq 'boolean';
    return $text =~ m/^-?\d+$/ if $type eq 'integer';
    return !ref($value) && $text =~ m/^"/ if $type eq 'string';
    return !ref($value) && $text =~ m!^"[A-Za-z0-9+/=]*"$! if $type eq 'bytes';
    die "unknown catalogue type '$type'\n";
}

my %sides = (storage => methods_of_side('storage'), provider => methods_of_side('provider'));
my %results;

for my $side (qw(storage provider)) {
    for my $method (sort keys %{ $sides{$side} }) {
        my $entry = $sides{$side}->{$method};
        subtest "$side $method" => sub {
            my @args = positional_args($method, $entry);
            my $target = $side eq 'storage' ? $plugin : $provider;
            my $before = scalar @{ $daemon->calls };
            my @res = eval { $target->$method(@args) };
            my $err = $@;
            $results{$method} = { res => \@res, err => $err };
            if (($ANSWER{$method} // [])->[-1] && $ANSWER{$method}->[-1]->[0] eq 'error') {
                like($err, qr/^\Q$method\E: not supported by a backup storage\n\z/, 'daemon error becomes a one-line die');
            } else {
                is($err, '', 'no error');
            }

            my $calls = $daemon->calls;
            is(scalar(@$calls), $before + 1, 'exactly one request');
            my $req = $calls->[-1];
            is($req->{method}, $method, 'JSON-RPC method is the PVE method name');

            my $params = $req->{params};
            my $spec = $entry->{params};
            my @unknown = grep { !exists $spec->{$_} } sort keys %$params;
            ok(!@unknown, 'no key outside the catalogue params') or diag("unknown: @unknown");
            for my $key (sort keys %$spec) {
                my $type = $spec->{$key};
                ok(exists $params->{$key}, "required param '$key' present") if $type !~ m/\?$/;
                ok(json_type_ok($params->{$key}, $type), "param '$key' is $type")
                    or diag(explain($params->{$key}));
            }
            is($params->{storeid}, 'st1', 'storeid sent') if exists $spec->{storeid};
            is_deeply($params->{scfg}, $SCFG, 'scfg sent as it is') if exists $spec->{scfg};
        };
    }
}

subtest 'every catalogue method was exercised' => sub {
    my %seen = map { $_->{method} => 1 } @{ $daemon->requests };
    ok($seen{$_}, "$_ reached the daemon") for sort keys %{ $cat->{methods} };
};

# ---- what the shim made of the arguments -----------------------------------------------------

sub last_params {
    my ($method) = @_;
    my ($req) = grep { $_->{method} eq $method } reverse @{ $daemon->requests };
    return $req->{params};
}

subtest 'argument conversions' => sub {
    is(last_params('list_volumes')->{vmid}, 100, 'vmid "100" sent as a number');
    is_deeply(last_params('prune_backups')->{keep}, { 'keep-last' => 3 }, 'keep values as numbers');
    is(last_params('prune_backups')->{dryrun}, JSON::true, 'dryrun as a boolean');
    is(last_params('free_image')->{isBase}, JSON::false, 'isBase as a boolean');
    is(last_params('backup_cleanup')->{success}, JSON::true, 'success as a boolean');
    is(decode_base64(last_params('backup_vm')->{'guest-config'}), $GUEST_CONFIG, 'guest config bytes in base64');
    is(decode_base64(last_params('backup_vm')->{info}->{'firewall-config'}), $FW_CONFIG,
        'info.firewall-config bytes in base64');
    is($INFO{backup_vm}->{'firewall-config'}, $FW_CONFIG, "caller's info hash not modified");
    is(decode_base64(last_params('backup_container')->{info}->{'firewall-config'}), $FW_CONFIG,
        'container info.firewall-config in base64');
    is(last_params('backup_container')->{info}->{'backup-user-id'}, 100000, 'backup-user-id kept');
    is_deeply(last_params('on_update_hook_full')->{update}, { 'max-protected-backups' => 3 }, 'update sent');
    ok(!grep({ m/sensitive|password/ } keys %{ last_params('on_add_hook') }), 'no sensitive values sent');
    ok(!exists last_params('volume_export')->{fh}, 'no file handle sent');
};

# ---- what the shim made of the answers ---------------------------------------------------------

subtest 'results in PVE shapes' => sub {
    is_deeply($results{status}{res}, [1000, 600, 400, 1], 'status: ($total,$avail,$used,$active)');
    is_deeply($results{parse_volname}{res}, ['backup', '100/qemu-1700000000', 100, undef, undef, undef, 'directory'],
        'parse_volname: 7-element list');
    is_deeply($results{path}{res}, ['/tmp/st1/100/qemu-1700000000', 100, 'backup'], 'path in list context');
    is(scalar($plugin->path($SCFG, $VOLNAME, 'st1')), '/tmp/st1/100/qemu-1700000000', 'path in scalar context');
    is(scalar($plugin->filesystem_path($SCFG, $VOLNAME)), '/tmp/st1/100/qemu-1700000000',
        'filesystem_path in scalar context');
    is_deeply($results{volume_size_info}{res}, [12345, 'directory', 12000, undef, 1700000000],
        'volume_size_info in list context');
    is(scalar($plugin->volume_size_info($SCFG, 'st1', $VOLNAME)), 12345, 'volume_size_info in scalar context');
    is_deeply($results{list_volumes}{res}, [[
        { volid => "st1:$VOLNAME", content => 'backup', format => 'directory', size => 12345,
          ctime => 1700000000, vmid => 100, subtype => 'qemu', notes => "vor dem Update \x{2713}" },
        { volid => 'st1:backup/100/qemu-1700000500', content => 'backup', format => 'directory', size => 12345,
          ctime => 1700000500, vmid => 100, subtype => 'qemu', protected => 1, parent => $VOLNAME },
    ]], 'list_volumes: arrayref, protected => 1 only when true, absent keys left out');
    is_deeply($results{list_images}{res}, [[]], 'list_images: empty arrayref');
    is_deeply($results{get_volume_attribute}{res}, ['a note'], 'notes attribute as a string');
    is_deeply($results{free_image}{res}, [undef], 'free_image returns undef, never a code ref');
    is_deeply($results{check_connection}{res}, [1], 'check_connection true');
    is_deeply($results{volume_has_feature}{res}, [undef], 'volume_has_feature false');
    is_deeply($results{prune_backups}{res}, [[
        { volid => "st1:$VOLNAME", ctime => 1700000000, type => 'qemu', vmid => 100, mark => 'keep' },
    ]], 'prune_backups: list of marks');
    is_deeply($results{backup_init}{res}, [{ 'archive-name' => '100/qemu-1700000000' }], 'backup_init');
    is_deeply($results{backup_cleanup}{res}, [{ stats => { 'archive-size' => 4096 } }], 'backup_cleanup stats');
    is_deeply($results{backup_get_mechanism}{res}, ['nbd'], 'backup mechanism');
    is_deeply($results{backup_vm_query_incremental}{res}, [{ 'drive-scsi0' => 'new' }], 'incremental modes');
    is_deeply($results{restore_get_mechanism}{res}, ['qemu-img', 'qemu'], 'restore_get_mechanism: ($mechanism, $vmtype)');
    is_deeply($results{archive_get_guest_config}{res}, [$GUEST_CONFIG], 'guest config bytes back');
    is_deeply($results{archive_get_firewall_config}{res}, [undef], 'no firewall config: undef');
    is_deeply($results{restore_vm_init}{res}, [{ 'drive-scsi0' => { size => 1073741824 } }], 'restore_vm_init');
    is_deeply($results{restore_vm_volume_init}{res}, [{ 'qemu-img-path' => '/run/dirbackupd/restore/1/drive-scsi0' }],
        'restore_vm_volume_init');
    is_deeply($results{restore_container_init}{res}, [{ 'tar-path' => '/tmp/st1/100/lxc-1700000000/archive.tar' }],
        'restore_container_init');
};

subtest 'protected attribute' => sub {
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return [reply => JSON::true] if $req->{method} eq 'get_volume_attribute';
        return;
    });
    is($plugin->get_volume_attribute($SCFG, 'st1', $VOLNAME, 'protected'), 1, 'protected true -> 1');
    $plugin->update_volume_attribute($SCFG, 'st1', $VOLNAME, 'protected', '1');
    $plugin->update_volume_attribute($SCFG, 'st1', $VOLNAME, 'protected', 0);
    $plugin->update_volume_attribute($SCFG, 'st1', $VOLNAME, 'notes', '');
    my @p = map { $_->{params} } grep { $_->{method} eq 'update_volume_attribute' } @{ $d->calls };
    is($p[0]->{value}, JSON::true, "protected '1' sent as true");
    is($p[1]->{value}, JSON::false, 'protected 0 sent as false');
    is($p[2]->{value}, '', 'empty notes sent as an empty string (clears them)');
    $d->stop;

    my $d2 = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return [reply => JSON::false] if $req->{method} eq 'get_volume_attribute' && $req->{params}{attribute} eq 'protected';
        return [reply => undef] if $req->{method} eq 'get_volume_attribute';
        return;
    });
    is($plugin->get_volume_attribute($SCFG, 'st1', $VOLNAME, 'protected'), 0, 'protected false -> 0');
    is($plugin->get_volume_attribute($SCFG, 'st1', $VOLNAME, 'notes'), undef, 'no notes -> undef');
};

subtest 'prune_backups relays log notifications to $logfunc' => sub {
    my @log;
    $plugin->prune_backups($SCFG, 'st1', { 'keep-last' => 1 }, 100, 'qemu', 0, sub { push @log, [@_] });
    is_deeply(\@log, [['info', "removing backup 'st1:backup/100/qemu-1600000000'"]], 'logfunc called with (level, message)');
};

subtest 'provider log notifications reach the log function' => sub {
    ok(grep({ $_->[0] eq 'info' && $_->[1] eq 'drive-scsi0: transferred 1.0 GiB' } @logged), 'backup_vm progress line');
};

done_testing();
