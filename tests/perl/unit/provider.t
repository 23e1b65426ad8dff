#!/usr/bin/perl -T

# The backup provider's promises to its PVE callers: the leftover arguments of PVE-API.md 3.4,
# bytes that stay bytes, cleanup calls that tolerate what vzdump really passes, and a
# backup_handle_log_file that never aborts the job.

use strict;
use warnings;

use Test::More;

use JSON;
use MIME::Base64 qw(encode_base64 decode_base64);

use DirBackupTest::FakeDaemon;
use PVE::Storage::Custom::DirBackupPlugin;

my $plugin = 'PVE::Storage::Custom::DirBackupPlugin';
my $SCFG = { type => 'dirbackup', path => '/tmp/st1' };
my $VOLNAME = 'backup/100/lxc-1700000000';

my @log;
my $p = $plugin->new_backup_provider($SCFG, 'st1', sub { push @log, [@_] });

# every byte value, a NUL, and a config line PVE needs back verbatim
my $BINARY = join('', map { chr } 0 .. 255) . "\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n\0";

subtest 'extra trailing arguments (PVE-API.md 3.4)' => sub {
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        my $m = $req->{method};
        return [reply => { mechanism => 'tar', vmtype => 'lxc' }] if $m eq 'restore_get_mechanism';
        return [reply => encode_base64("arch: amd64\n", '')] if $m eq 'archive_get_guest_config';
        return [reply => encode_base64("[OPTIONS]\n", '')] if $m eq 'archive_get_firewall_config';
        return [reply => { 'tar-path' => '/tmp/st1/100/lxc-1700000000/archive.tar' }] if $m eq 'restore_container_init';
        return;
    });

    is_deeply([$p->restore_get_mechanism($VOLNAME, 'st1')], ['tar', 'lxc'], 'restore_get_mechanism($volname, $storeid)');
    is($p->archive_get_guest_config($VOLNAME, 'st1'), "arch: amd64\n", 'archive_get_guest_config($volname, $storeid)');
    is($p->archive_get_firewall_config($VOLNAME, 'st1'), "[OPTIONS]\n", 'archive_get_firewall_config($volname, $storeid)');
    is_deeply($p->restore_container_init($VOLNAME, 'st1', {}), { 'tar-path' => '/tmp/st1/100/lxc-1700000000/archive.tar' },
        'restore_container_init($volname, $storeid, {})');
    $p->restore_container_cleanup($VOLNAME, 'st1', {});
    # the POD's own forms
    $p->restore_get_mechanism($VOLNAME);
    $p->restore_container_init($VOLNAME, { 'from-pod' => 1 });
    $p->restore_container_cleanup($VOLNAME, 'st1');

    my @calls = @{ $d->calls };
    for my $c (@calls) {
        is($c->{params}->{volname}, $VOLNAME, "$c->{method}: volname from the first argument");
        is($c->{params}->{storeid}, 'st1', "$c->{method}: storeid from the provider");
    }
    my @init = grep { $_->{method} eq 'restore_container_init' } @calls;
    is_deeply($init[0]->{params}->{info}, {}, 'trailing {} is the info');
    is_deeply($init[1]->{params}->{info}, { 'from-pod' => 1 }, 'info in the POD position');
    my @cleanup = grep { $_->{method} eq 'restore_container_cleanup' } @calls;
    is_deeply($cleanup[0]->{params}->{info}, {}, 'cleanup: trailing {} is the info');
    ok(!defined($cleanup[1]->{params}->{info}), 'a storeid string is never taken for the info');
    ok(!grep({ exists $_->{params}->{info} } grep { $_->{method} =~ m/^(restore_get_mechanism|archive_get_)/ } @calls),
        'no info where the catalogue has none');
};

subtest 'bytes round-trip' => sub {
    my $upgraded = $BINARY;
    utf8::upgrade($upgraded);    # the same bytes, held in Perl's other representation
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return [reply => $req->{params}->{volname} =~ m/nofw/ ? undef : encode_base64($BINARY, '')]
            if $req->{method} =~ m/^archive_get_/;
        return;
    });
    $p->backup_vm(100, $BINARY, {}, { 'firewall-config' => $BINARY });
    $p->backup_vm(100, $upgraded, {}, {});
    $p->backup_container(100, $BINARY, ['/tmp/?*'], { 'firewall-config' => $upgraded, directory => '/mnt/vzsnap0' });

    my @calls = @{ $d->calls };
    is(decode_base64($calls[0]->{params}->{'guest-config'}), $BINARY, 'backup_vm guest config: exact bytes');
    is(decode_base64($calls[0]->{params}->{info}->{'firewall-config'}), $BINARY, 'backup_vm firewall config: exact bytes');
    is(decode_base64($calls[1]->{params}->{'guest-config'}), $BINARY, 'an upgraded string sends the same bytes');
    is(decode_base64($calls[2]->{params}->{'guest-config'}), $BINARY, 'backup_container guest config: exact bytes');
    is(decode_base64($calls[2]->{params}->{info}->{'firewall-config'}), $BINARY, 'container firewall config: exact bytes');

    my $got = $p->archive_get_guest_config('backup/100/qemu-1700000000');
    is($got, $BINARY, 'archive_get_guest_config returns the exact bytes');
    ok(!utf8::is_utf8($got), 'as a byte string');
    is($p->archive_get_firewall_config('backup/100/qemu-1700000000'), $BINARY, 'firewall config bytes');
    is($p->archive_get_firewall_config('backup/100/qemu-1700000000-nofw'), undef, 'no firewall config: undef');
};

subtest 'Perl objects never cross the socket' => sub {
    my $d = DirBackupTest::FakeDaemon->new();
    open(my $fh, '<', '/dev/null') or die $!;
    my $volumes = {
        'drive-scsi0' => {
            size => 4096, 'bitmap-mode' => 'none',
            'file-handle' => $fh, 'next-dirty-region' => sub { return },
        },
    };
    ok(eval { $p->backup_vm(100, "x\n", $volumes, {}); 1 }, 'backup_vm with file-handle volumes') or diag($@);
    is_deeply($d->calls->[0]->{params}->{volumes}, { 'drive-scsi0' => { size => 4096, 'bitmap-mode' => 'none' } },
        'code refs and handles left out');
    ok(ref($volumes->{'drive-scsi0'}->{'next-dirty-region'}), "caller's hash untouched");
};

subtest 'backup_cleanup as vzdump calls it on failure' => sub {
    my $d = DirBackupTest::FakeDaemon->new();
    my $res = $p->backup_cleanup(undef, undef, 0, { error => "unable to find VM 100\n" });
    is_deeply($res, { stats => {} }, 'undef vmid and vmtype accepted');
    $p->backup_cleanup('100', 'qemu', '', { error => 'x' });
    my @params = map { $_->{params} } @{ $d->calls };
    is($params[0]->{success}, JSON::false, 'success false as a JSON boolean');
    ok(!defined($params[0]->{vmid}) && !defined($params[0]->{vmtype}), 'vmid and vmtype null');
    is($params[0]->{info}->{error}, "unable to find VM 100\n", 'error passed on');
    is($params[1]->{success}, JSON::false, "'' is false too");
    is($params[1]->{vmid}, 100, 'vmid as a number');
};

subtest 'job_cleanup twice' => sub {
    my $d = DirBackupTest::FakeDaemon->new();
    ok(eval { $p->job_cleanup; $p->job_cleanup; 1 }, 'two calls, no error') or diag($@);
    is(scalar(grep { $_->{method} eq 'job_cleanup' } @{ $d->calls }), 2, 'both forwarded: the daemon decides');
};

subtest 'backup_handle_log_file never dies' => sub {
    {
        local $ENV{DIRBACKUP_SOCKET} = '/nonexistent/dirbackupd.sock';
        @log = ();
        my $ok = eval { $p->backup_handle_log_file(100, '/var/log/vzdump/qemu-100.log'); 1 };
        ok($ok, 'daemon down: no die');
        is(scalar(@log), 1, 'one log line');
        is($log[0]->[0], 'warn', 'at level warn');
        like($log[0]->[1], qr/dirbackupd is not running/, 'saying why');
    }
    {
        my $d = DirBackupTest::FakeDaemon->new(handler => sub {
            my ($req) = @_;
            return [error => 1014, 'cannot copy log: disk full'] if $req->{method} eq 'backup_handle_log_file';
            return;
        });
        @log = ();
        ok(eval { $p->backup_handle_log_file(100, '/var/log/vzdump/qemu-100.log'); 1 }, 'daemon error: no die');
        like($log[0]->[1], qr/cannot copy log: disk full/, 'reported as a warning');

        my $dying = $plugin->new_backup_provider($SCFG, 'st1', sub { die "log broken\n" });
        ok(eval { $dying->backup_handle_log_file(100, '/var/log/x.log'); 1 }, 'even when the log function dies');
    }
    {
        # the task being stopped is not our failure: vzdump must see it to stop the job
        my $d = DirBackupTest::FakeDaemon->new(handler => sub {
            my ($req) = @_;
            return [hang => 1] if $req->{method} eq 'backup_handle_log_file';
            return;
        });
        local $SIG{ALRM} = sub { die "interrupted by signal\n" };
        alarm(1);
        eval { $p->backup_handle_log_file(100, '/var/log/vzdump/qemu-100.log') };
        alarm(0);
        is($@, "interrupted by signal\n", 'a stop signal still reaches vzdump');
        ok($d->wait_for(sub { $_[0]->{event} && $_[0]->{event} eq 'closed' }), 'and the daemon sees the cancel');
    }
};

subtest 'provider log function' => sub {
    my $d = DirBackupTest::FakeDaemon->new(handler => sub {
        my ($req) = @_;
        return ([log => info => 'starting'], [log => err => 'disk gone'], [reply => 'nbd'])
            if $req->{method} eq 'backup_get_mechanism';
        return;
    });
    @log = ();
    is($p->backup_get_mechanism(100, 'qemu'), 'nbd', 'result');
    is_deeply(\@log, [['info', 'starting'], ['err', 'disk gone']], 'log lines while the call runs');
};

done_testing();
